"""Side-by-side LiteRT latency of existing .tflite files, needing only ai-edge-litert and numpy.

For a target machine that has no TensorFlow (a phone-class board, another server CPU): export the files
where the library is installed, copy them and this script over, and compare them in one process. Files
are interleaved round by round and the order rotates (and reverses every other round), so that neither
a busy neighbour nor the first-created-interpreter effect favours one file. Reported per file: median over
rounds of the per-round median invoke time, and the median over rounds of the per-round ratio to the
first file (the baseline).

    python benchmarks/litert_files_latency.py ours_fp32.tflite official.tflite ours_int8.tflite --threads 1,2
    python benchmarks/litert_files_latency.py a.tflite b.tflite --macs 59316222,59316222  # adds GMAC/s
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_description() -> str:
    """Processor model and the SIMD features that decide XNNPACK's int8 and fp32 kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    present = [flag for flag in CPU_FLAGS if flag in flags]
    return f"{model}; SIMD: {', '.join(present) or 'none of ' + ', '.join(CPU_FLAGS)}"


def make_interpreter(path: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    details = interpreter.get_input_details()[0]
    if int(details["shape"][0]) != 1:
        interpreter.resize_tensor_input(details["index"], [1, *details["shape"][1:]])
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    interpreter.set_tensor(details["index"], np.zeros(details["shape"], details["dtype"]))
    return interpreter


def median_invoke_ms(interpreter, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        interpreter.invoke()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        interpreter.invoke()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e3)


def rotated_order(count: int, round_index: int) -> list[int]:
    order = [(index + round_index) % count for index in range(count)]
    return order[::-1] if round_index % 2 else order


def measure(paths: list[str], threads: int, rounds: int, repeats: int) -> np.ndarray:
    """(rounds, files) matrix of per-round median milliseconds."""
    interpreters = [make_interpreter(path, threads) for path in paths]
    table = np.zeros((rounds, len(paths)))
    for round_index in range(rounds):
        for index in rotated_order(len(paths), round_index):
            table[round_index, index] = median_invoke_ms(interpreters[index], repeats)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help=".tflite files; the first is the baseline of the ratios")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=40, help="invokes per file per round")
    parser.add_argument("--macs", help="comma-separated multiply-accumulates per invoke, one per file")
    args = parser.parse_args(argv)
    macs = [float(value) for value in args.macs.split(",")] if args.macs else None
    if macs is not None and len(macs) != len(args.files):
        parser.error(f"--macs has {len(macs)} values for {len(args.files)} files")
    for path in args.files:
        if not Path(path).is_file():
            parser.error(f"{path}: no such file")
    print(f"CPU: {cpu_description()}")
    print("| threads | file | MiB | median ms | ratio to first | GMAC/s |")
    print("|---|---|---|---|---|---|")
    for threads in (int(value) for value in args.threads.split(",")):
        table = measure(args.files, threads, args.rounds, args.repeats)
        ratios = np.median(table / table[:, :1], axis=0)
        for index, path in enumerate(args.files):
            milliseconds = float(np.median(table[:, index]))
            rate = f"{macs[index] / milliseconds / 1e6:.1f}" if macs else "-"
            print(f"| {threads} | {Path(path).name} | {Path(path).stat().st_size / 2**20:.2f} | "
                  f"{milliseconds:.3f} | {ratios[index]:.3f} | {rate} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
