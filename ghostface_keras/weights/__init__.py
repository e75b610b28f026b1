"""Weight files, below the model builders: the checkpoint table, downloads, the official `.h5` reader and
`apply_weights`, which fills a model a builder has just built (`weights=`). Nothing here builds a model."""
