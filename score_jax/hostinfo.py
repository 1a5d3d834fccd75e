"""Where a run or a benchmark ran: the CPU model and its vector/matrix features.

XLA:CPU picks other kernels per instruction set (AMX-BF16, AVX512-BF16, AVX2), so numerics and
speed differ across machines; every benchmark table and every study run records this.
"""

FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
  """(model name, the FEATURES this CPU has); ("unknown", []) where the file is absent."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError:
    return "unknown", []
  model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")),
               "unknown")
  flags = set(next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), []))
  return model, [f for f in FEATURES if f in flags]


def describe() -> str:
  """One line for a table header or a log: `<model> [<features>]`."""
  model, flags = cpu()
  return f"{model} [{' '.join(flags) or 'no avx2/avx512/amx'}]"
