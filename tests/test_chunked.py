"""Chunked code run past its chunk size (issue 22): the dark-matter sums over row chunks and the
store's sha256 over 1 MiB reads, against one-shot numpy / hashlib answers."""

import hashlib

import numpy as np
import pytest
import torch

from interp.store import file_sha256
from sae.darkmatter import decomposition, regression
from sae.darkmatter.decomposition import nonlinear_fvu_with_inputs
from sae.darkmatter.regression import r2_per_dimension, residual_fvu, total_variance, vector_r2


def rows(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # a large, row-dependent offset: a mean taken from one chunk, or per chunk, is far from the global one
    x = torch.randn(n, d, generator=gen) + 5.0 + torch.linspace(0, 3, n)[:, None]
    return x, x + 0.7 * torch.randn(n, d, generator=gen)


def numpy_answers(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, object]:
    xn, hn = x.double().numpy(), x_hat.double().numpy()
    sst = ((xn - xn.mean(0)) ** 2).sum(0)
    r2 = 1 - ((xn - hn) ** 2).sum(0) / sst
    return dict(total_variance=sst.sum(), r2=r2, vector_r2=r2.mean(), fvu=((xn - hn) ** 2).sum() / sst.sum())


def check_against_numpy(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    want = numpy_answers(x, x_hat)
    assert total_variance(x) == pytest.approx(want["total_variance"], rel=1e-10)
    np.testing.assert_allclose(r2_per_dimension(x, x_hat).numpy(), want["r2"], rtol=1e-10)
    assert vector_r2(x, x_hat) == pytest.approx(want["vector_r2"], rel=1e-10)
    assert residual_fvu(x, x.double() - x_hat.double()) == pytest.approx(want["fvu"], rel=1e-10)


def test_sums_over_two_chunks_at_the_real_chunk_size():
    n = regression.ROWS_PER_CHUNK + 1234  # one full chunk and a partial one, with the constant as shipped
    x, x_hat = rows(n, 3, seed=0)
    assert len(x.split(regression.ROWS_PER_CHUNK)) == 2
    check_against_numpy(x, x_hat)


def test_sums_over_many_chunks_where_the_constant_is_read(monkeypatch):
    # regression's functions read regression.ROWS_PER_CHUNK at call time; decomposition holds its own copy
    monkeypatch.setattr(regression, "ROWS_PER_CHUNK", 97)
    monkeypatch.setattr(decomposition, "ROWS_PER_CHUNK", 97)
    x, x_hat = rows(300, 4, seed=1)  # three full chunks and a partial one
    check_against_numpy(x, x_hat)
    # the held-out FVU a fitted map leaves, summed chunk by chunk in decomposition.py
    gen = torch.Generator().manual_seed(2)
    x_fit, x_eval = torch.randn(400, 4, generator=gen), torch.randn(300, 4, generator=gen)
    extra_fit, extra_eval = torch.randn(400, 2, generator=gen), torch.randn(300, 2, generator=gen)
    err_fit = x_fit @ torch.randn(4, 4, generator=gen) + extra_fit[:, :1] + 0.1 * torch.randn(400, 4, generator=gen)
    err_eval = x_eval @ torch.randn(4, 4, generator=gen) + extra_eval[:, :1]
    got = nonlinear_fvu_with_inputs(x_fit, err_fit, extra_fit, x_eval, err_eval, extra_eval)
    variance = ((x_eval.double().numpy() - x_eval.double().numpy().mean(0)) ** 2).sum()
    for key, fit_x, eval_x in (
        ("nonlinear_fvu", x_fit, x_eval),
        ("nonlinear_fvu_with_inputs", torch.cat([x_fit, extra_fit], 1), torch.cat([x_eval, extra_eval], 1)),
    ):
        weight = np.linalg.lstsq(fit_x.double().numpy(), err_fit.double().numpy(), rcond=None)[0]
        left = ((err_eval.double().numpy() - eval_x.double().numpy() @ weight) ** 2).sum() / variance
        assert got[key] == pytest.approx(left, rel=1e-8), key


def test_file_sha256_reads_past_the_first_mebibyte(tmp_path):
    data = bytearray(
        np.random.default_rng(0).integers(0, 256, size=(5 << 19) + 17, dtype=np.uint8).tobytes()
    )  # 2.5 MiB + 17 bytes
    path = tmp_path / "shard.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(bytes(data)).hexdigest()
    before = file_sha256(path)
    for offset in ((1 << 20) + 5, len(data) - 1):  # in the second 1 MiB read, and the last byte of the partial third
        corrupted = bytearray(data)
        corrupted[offset] ^= 0x01
        path.write_bytes(corrupted)
        assert file_sha256(path) == hashlib.sha256(bytes(corrupted)).hexdigest() != before, offset
