"""The dispatch benchmark runs end to end (tiny sizes; the real measurement is run by hand)."""
from bench.perf.moe_dispatch import main


def test_moe_dispatch_benchmark_smoke(capsys):
    assert main(["--tokens", "32", "--d-model", "16", "--d-ff", "24", "--experts", "2,4",
                 "--warmup", "0", "--repeats", "1", "--threads", "1", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fast/dense" in out and "|  4 |" in out
    assert "time(E=4) / time(E=2)" in out
    assert "gemm ms" in out and "gemm floor: the per-expert matmuls alone take" in out
