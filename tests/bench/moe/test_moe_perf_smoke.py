"""The MoE benchmarks run end to end (tiny sizes; the real measurements are run by hand)."""
import torch

from bench.moe import LoRAFFNExperts, SwiGLUExpert
from bench.perf.lora_ffn import main as lora_main, stacked
from bench.perf.moe_dispatch import main


def test_moe_dispatch_benchmark_smoke(capsys):
    assert main(["--tokens", "32", "--d-model", "16", "--d-ff", "24", "--experts", "2,4",
                 "--warmup", "0", "--repeats", "1", "--threads", "1", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fast/dense" in out and "|  4 |" in out
    assert "time(E=4) / time(E=2)" in out
    assert "gemm ms" in out and "gemm floor: the per-expert matmuls alone take" in out


def test_lora_ffn_benchmark_smoke_and_its_reference_agrees(capsys):
    assert lora_main(["--rows", "64", "--d-model", "16", "--d-ff", "24", "--rank", "4", "--experts", "2,4",
                      "--warmup", "0", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "segment/dense" in out and "|  4 |" in out and "time(E=4) / time(E=2)" in out
    torch.manual_seed(0)
    experts = LoRAFFNExperts(SwiGLUExpert(16, 24), 3, r=4, alpha=8)
    with torch.no_grad():
        for p in experts.experts.parameters():
            p.normal_(0, 0.2)
    x, counts = torch.randn(10, 16), [4, 0, 6]
    torch.testing.assert_close(stacked(experts, x, counts), experts.forward_grouped(x, counts), rtol=1e-5, atol=1e-5)
