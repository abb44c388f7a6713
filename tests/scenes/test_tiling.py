"""The shared tiler: tile offsets, blend window, the batched tiled runner, and `predict_tiled` of the dense heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from terramind import TerraMindConfig
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
from terramind.scenes.tiled import predict_tiled
from terramind.tiling import blend_window, run_tiled, tile_starts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tile_starts_cover_the_scene_with_the_last_tile_flush():
    assert tile_starts(224, 224, 160) == [0]
    assert tile_starts(100, 224, 160) == [0]  # smaller than a tile: one (padded) tile
    assert tile_starts(500, 224, 160) == [0, 160, 276]
    assert tile_starts(448, 224, 224) == [0, 224]
    for size, tile, stride in [(1000, 224, 160), (17, 16, 1), (240, 64, 48)]:
        starts = tile_starts(size, tile, stride)
        assert starts[0] == 0 and starts[-1] == size - tile
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_blend_window_tapers_to_the_edges():
    window = blend_window(8, 2)
    assert window.shape == (8, 8) and window[3, 4] == 1.0
    torch.testing.assert_close(window[0, :4], torch.tensor([0.0625, 0.1875, 0.25, 0.25]))
    torch.testing.assert_close(window, window.T)


@pytest.mark.parametrize("size", [(64, 64), (40, 72), (150, 97)])
def test_run_tiled_reassembles_identity_and_pooled_outputs(size):
    generator = torch.Generator().manual_seed(0)
    scene = torch.randn(2, 3, *size, generator=generator)
    classes = torch.randint(0, 9, (2, 1, *size), generator=generator)
    calls = []

    def function(tiles):
        calls.append(tiles["x"].shape[0])
        return {"x": tiles["x"], "classes": tiles["classes"], "pooled": F.avg_pool2d(tiles["x"], 16)}

    out = run_tiled(function, {"x": scene, "classes": classes}, tile_size=48, overlap=16, batch_size=3,
                    multiple_of=16)  # fmt: skip
    torch.testing.assert_close(out["x"], scene)  # overlapping tiles of the same values blend to the values
    assert torch.equal(out["classes"], classes) and out["classes"].dtype == classes.dtype
    assert out["pooled"].shape == (2, 3, -(-size[0] // 16), -(-size[1] // 16))
    assert max(calls) <= 3 * 2  # batch_size tiles (of 2 samples each) per call
    again = run_tiled(lambda t: t["x"] * 2, {"x": scene}, tile_size=48, overlap=16, batch_size=1, multiple_of=16)
    torch.testing.assert_close(again, scene * 2)


def test_run_tiled_integer_outputs_come_from_the_nearest_tile_centre():
    scene = torch.zeros(1, 1, 64, 96)
    counter = iter(range(100))
    out = run_tiled(lambda t: torch.full(t["x"].shape, next(counter), dtype=torch.long), {"x": scene},
                    tile_size=64, overlap=32, batch_size=1)  # fmt: skip
    # tiles start at x = 0 and 32 (centres 32 and 64): the left third is tile 0, the right third tile 1
    assert out[0, 0, 10, 5] == 0 and out[0, 0, 10, 90] == 1


def test_run_tiled_errors():
    scene = {"x": torch.zeros(1, 1, 32, 32)}
    with pytest.raises(ValueError, match="multiples of 16"):
        run_tiled(lambda t: t["x"], scene, tile_size=40, multiple_of=16)
    with pytest.raises(ValueError, match="0 <= overlap < tile_size"):
        run_tiled(lambda t: t["x"], scene, tile_size=32, overlap=32)
    with pytest.raises(ValueError, match="every input needs batch size 1 and spatial size 32x32"):
        run_tiled(lambda t: t["x"], {**scene, "y": torch.zeros(1, 1, 16, 32)}, tile_size=32)


def test_predict_tiled_matches_forward_on_one_tile_and_is_batch_invariant():
    config = TerraMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_decoder_layers=1,
                             hidden_act="gelu", gated_mlp=False, modalities=["S2L2A", "S1RTC"], num_labels=3,
                             decoder_hidden_size=16)  # fmt: skip
    model = TerraMindForSemanticSegmentation(config).train()
    generator = torch.Generator().manual_seed(0)
    tile = {"S2L2A": torch.randn(1, 12, 64, 64, generator=generator), "S1RTC": torch.randn(1, 2, 64, 64)}
    logits = predict_tiled(model, tile, tile_size=64, overlap=32)
    assert model.training  # restored
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(**tile).logits)
    scene = {"S2L2A": torch.randn(2, 12, 100, 150, generator=generator), "S1RTC": torch.randn(2, 2, 100, 150)}
    one = predict_tiled(model, **scene, tile_size=64, overlap=32, batch_size=1)
    many = predict_tiled(model, **scene, tile_size=64, overlap=32, batch_size=16)
    assert one.shape == (2, 3, 100, 150) and one.dtype == torch.float32
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-5)
    small = predict_tiled(model, S2L2A=torch.randn(1, 12, 20, 30), tile_size=64, overlap=0)  # padded to a tile
    assert small.shape == (1, 3, 20, 30)
