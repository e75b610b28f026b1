"""The bottom layer: what every other layer may use and nothing of ours it imports.

Errors, the one atomic file writer and image lister (`files`), the one image reader (`images`), the input
normalization (`preprocessing`), numerics, tables, progress bars, and the process topology of a distributed run
(`distribution`: which process writes, how many devices).
"""
