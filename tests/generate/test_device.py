"""`device`: the same engine on a GPU. The device plumbing is tested here on the CPU (the KV cache and
each step's index tensors follow the model's device; refusals are one clear sentence); the CUDA
run itself only where PyTorch sees a GPU."""

import pytest
import torch

import genforge
from genforge.errors import GenforgeError
from genforge.generate.sampling import SamplingParams
from genforge.model.config import ModelConfig
from genforge.model.kv_cache import PagedBatch, PagedKVCache

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(CUDA, reason="this PyTorch sees a GPU")
def test_cuda_without_a_gpu_is_refused_in_one_sentence(tiny_model_dir):
    with pytest.raises(GenforgeError, match="needs an NVIDIA GPU and a CUDA build of PyTorch"):
        genforge.load(str(tiny_model_dir), device="cuda")


def test_an_unknown_device_is_refused(tiny_model_dir):
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(GenforgeError, match='device must be "cpu" or "cuda"'):
            genforge.load(str(tiny_model_dir), device=bad)


def test_the_paged_batch_puts_its_index_tensors_on_the_caches_device():
    """Built on the CPU from Python lists, used where the cache is: every tensor a layer reads
    goes there ("meta" stands in for a GPU: same code path, no data)."""
    cfg = ModelConfig(vocab_size=32, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)
    cache = PagedKVCache.for_model(cfg, 8, 4, torch.float16, device="meta")
    assert cache.device.type == "meta" and cache.k[0].is_meta
    # a decode, a fresh prompt, a prompt chunk after a cached prefix
    batch = PagedBatch(cache, [([0, 1], 5, 1, True), ([2, 3], 0, 6, True), ([4, 5], 3, 4, True)])
    tensors = [batch.positions, batch.write_slots, batch.last_rows, batch.decode_index]
    tensors += [batch.decode_lengths] + [keys for _, _, keys, _ in batch.chunks]
    tensors += [m for masks in batch.chunk_masks for m in masks.values() if m is not None]
    assert all(t.is_meta for t in tensors)
    cache.copy_slots(torch.tensor([0, 1]), torch.tensor([4, 5]))  # CPU indices are moved too


@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (untested on hardware until one is lent)")
def test_a_model_on_cuda_generates_what_it_does_on_the_cpu(tiny_model_dir):
    """fp32 on both: the same greedy tokens, and the first step's logits within float32 noise."""
    greedy = SamplingParams(temperature=0, max_tokens=12)
    prompt = [5, 17, 42, 99, 3]
    cpu = genforge.load(str(tiny_model_dir), dtype="fp32", kv_dtype="fp32")
    gpu = genforge.load(str(tiny_model_dir), dtype="fp32", kv_dtype="fp32", device="cuda")
    assert gpu.engine.cache.device.type == "cuda"
    want = list(cpu.engine.generate(prompt, greedy, frozenset()))
    assert list(gpu.engine.generate(prompt, greedy, frozenset())) == want
    with torch.inference_mode():
        a = cpu.model(torch.tensor([prompt]))
        b = gpu.model(torch.tensor([prompt], device="cuda")).cpu()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
