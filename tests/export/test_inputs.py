"""Integer inputs done right (issue 13 item 1): test vector 0 is the example, generated indices stay
inside the example's range and an embedding's rows, and users can bring their own test inputs."""

import numpy as np
import pytest
import torch

from edgerun.export import ExportError, export_model, read_manifest
from edgerun.export.inputs import generated_like, input_ranges
from edgerun.export.pipeline import ExportOptions


def _factory(name):
    import factories  # on sys.path from the session fixture in conftest

    return getattr(factories, name)


def _ranges(factory):
    model, example = factory()
    return example, input_ranges(torch.export.export(model, example), example)


def test_an_index_that_only_feeds_an_embedding_may_take_any_row():
    example, ranges = _ranges(_factory("float_and_index"))
    assert ranges[0] is None
    assert (ranges[1].low, ranges[1].high, ranges[1].embedding_rows) == (0, 9, 10)
    samples = generated_like(example, 64, 0, ranges)
    indices = torch.cat([s[1] for s in samples])
    assert int(indices.min()) >= 0 and int(indices.max()) <= 9 and len(set(indices.tolist())) > 3
    assert torch.equal(samples[0][0], example[0]) and torch.equal(samples[0][1], example[1])


class IndexAndOffset(torch.nn.Module):
    """The index feeds an embedding and is also used as a number: only the example's range is safe."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.table = torch.nn.Parameter(torch.randn(6, 4))

    def forward(self, idx):
        return self.emb(idx) + self.table[idx + 1]


def test_an_index_with_other_uses_stays_in_the_example_range():
    example = (torch.tensor([[1, 4]]),)
    ranges = input_ranges(torch.export.export(IndexAndOffset(), example), example)
    assert (ranges[0].low, ranges[0].high) == (1, 4) and not ranges[0].only_embeddings
    samples = generated_like(example, 32, 0, ranges)
    values = torch.cat([s[0] for s in samples])
    assert int(values.min()) >= 1 and int(values.max()) <= 4


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fp32", "int8", "int8-dynamic", "8da4w"])
def test_float_and_int64_embedding_input_exports_in_every_scheme(make_artifact, scheme):
    art = make_artifact("factories:float_and_index", "rpi5", scheme)
    m = read_manifest(art)
    assert m.status == "ok", m.verification.failures
    assert [s.dtype for s in m.inputs] == ["float32", "int64"]
    _, example = _factory("float_and_index")()
    first = m.load_test_vector(0)
    np.testing.assert_array_equal(first.inputs[0], example[0].numpy())
    np.testing.assert_array_equal(first.inputs[1], example[1].numpy())
    for i in range(len(m.test_vectors)):
        index = m.load_test_vector(i).inputs[1]
        assert index.dtype == np.int64 and 0 <= index.min() and index.max() <= 9


def test_user_vectors_file_follows_the_example(tmp_path):
    path = tmp_path / "vectors.npz"
    np.savez(path, input_0=np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32),
             input_1=np.array([[0], [9], [3]], dtype=np.int64))
    m = export_model("factories:float_and_index", "host", "fp32", tmp_path / "out",
                     options=ExportOptions(vectors_file=str(path)))
    assert m.status == "ok" and len(m.test_vectors) == 4
    assert m.load_test_vector(0).inputs[1].tolist() == [7]        # the example
    assert [m.load_test_vector(i).inputs[1].tolist() for i in (1, 2, 3)] == [[0], [9], [3]]
    assert m.recipe.vectors_source["source"] == "file"


def test_user_index_out_of_the_embedding_is_refused_with_file_and_input(tmp_path):
    path = tmp_path / "vectors.npz"
    np.savez(path, input_0=np.zeros((2, 32), np.float32), input_1=np.array([[2], [10]], dtype=np.int64))
    with pytest.raises(ExportError) as info:
        export_model("factories:float_and_index", "host", "fp32", tmp_path / "out",
                     options=ExportOptions(vectors_file=str(path)))
    text = info.value.paragraph()
    assert "vectors.npz" in text and "input 1" in text and "10 rows" in text and "0..9" in text
    assert not (tmp_path / "out").exists()


def test_calibration_index_out_of_range_is_refused(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input_0=np.zeros((2, 32), np.float32), input_1=np.array([[-1], [3]], dtype=np.int64))
    with pytest.raises(ExportError) as info:
        export_model("factories:float_and_index", "host", "int8", tmp_path / "out",
                     options=ExportOptions(calibration=str(path)))
    assert info.value.stage == "quantize" and "calib.npz" in info.value.message and "input 1" in info.value.message
