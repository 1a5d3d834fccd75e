"""hostinfo.cpu reads the model name and the bf16/AVX features from a cpuinfo file."""
from score_jax import hostinfo


def test_cpu_reads_the_model_and_only_whole_flag_names(tmp_path):
  path = tmp_path / "cpuinfo"
  # avx512_bf16_extra must not count as avx512_bf16 (whole words only); amx_tile is there.
  path.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                  "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16_extra amx_tile\n\n"
                  "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
  assert hostinfo.cpu(str(path)) == ("Test CPU 9000", ["amx_tile", "avx512f", "avx2"])


def test_a_missing_file_is_unknown(tmp_path):
  assert hostinfo.cpu(str(tmp_path / "absent")) == ("unknown", [])
