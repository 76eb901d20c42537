"""An int64 input whose elements index *different* tables (issue 20): a recommender's id matrix with one
categorical column per table got generated ids from one range and the export died with `IndexError:
index out of range in self`. Each element's range is read off the graph -- through select, slice,
unbind and reshape to every embedding / embedding_bag it reaches -- in several shapes of the pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgerun.export import ExportError
from edgerun.export.inputs import generated_like, input_ranges, load_inputs_file

SIZES = (3, 50, 7, 1000)


class BySelect(nn.Module):
    """x[:, k] for each column k: one table per column (the recommender of the issue)."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, 4) for n in SIZES)

    def forward(self, ids):
        return torch.cat([t(ids[:, k]) for k, t in enumerate(self.tables)], dim=-1)


class BySlice(nn.Module):
    """Column blocks by slicing: ids[:, 0:2] -> a 5-row table, ids[:, 2:] -> a 300-row table."""

    def __init__(self):
        super().__init__()
        self.small, self.big = nn.Embedding(5, 4), nn.Embedding(300, 4)

    def forward(self, ids):
        return self.small(ids[:, 0:2]).sum(1) + self.big(ids[:, 2:]).sum(1)


class ByUnbind(nn.Module):
    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, 4) for n in SIZES)

    def forward(self, ids):
        return sum(t(c) for t, c in zip(self.tables, ids.unbind(1)))


class ByBag(nn.Module):
    """Rows of a multi-hot matrix: two bags of different sizes, a bag's ids reshaped first."""

    def __init__(self):
        super().__init__()
        self.genres, self.tags = nn.EmbeddingBag(6, 4, mode="mean"), nn.EmbeddingBag(400, 4, mode="sum")

    def forward(self, ids):
        return self.genres(ids[:, :3]) + self.tags(ids[:, 3:].reshape(ids.shape[0], -1))


class SharedTable(nn.Module):
    """Two columns share one table, a third has its own."""

    def __init__(self):
        super().__init__()
        self.items, self.user = nn.Embedding(40, 4), nn.Embedding(9, 4)

    def forward(self, ids):
        return self.items(ids[:, 0]) * self.items(ids[:, 1]) + self.user(ids[:, 2])


CASES = {
    # model, example ids (valid, small), the row count each column must stay under
    "select": (BySelect, torch.tensor([[1, 2, 3, 4], [0, 1, 0, 1]]), list(SIZES)),
    "slice": (BySlice, torch.tensor([[1, 2, 3, 4], [0, 1, 0, 1]]), [5, 5, 300, 300]),
    "unbind": (ByUnbind, torch.tensor([[1, 2, 3, 4]]), list(SIZES)),
    "embedding_bag": (ByBag, torch.tensor([[1, 2, 3, 4, 5], [0, 0, 1, 2, 2]]), [6, 6, 6, 400, 400]),
    "shared": (SharedTable, torch.tensor([[1, 2, 3]]), [40, 40, 9]),
}


def _ranges(name):
    make, ids, _ = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    example = (ids,)
    return model, example, input_ranges(torch.export.export(model, example, strict=False), example)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_column_draws_from_its_own_table(name):
    model, example, ranges = _ranges(name)
    rows = CASES[name][2]
    samples = generated_like(example, 200, 0, ranges)
    with torch.no_grad():
        for s in samples:
            model(*s)  # an id out of any table raises IndexError here
    ids = torch.stack([s[0] for s in samples])          # [N, B, C]
    for col, n in enumerate(rows):
        values = ids[..., col]
        assert int(values.min()) >= 0 and int(values.max()) <= n - 1, (col, n)
        # each column explores its own table, not the smallest one (or the example's values)
        assert int(values.max()) >= min(n - 1, 2 * int(example[0][..., col].max()) + 2) or n <= 3, (col, n)
    assert ranges[0].embedding_rows == min(rows)


def test_a_vectors_file_is_checked_per_column_naming_the_table(tmp_path):
    _, example, ranges = _ranges("select")
    good = np.array([[[2, 49, 6, 999], [0, 0, 0, 0]]], dtype=np.int64)
    path = tmp_path / "v.npz"
    np.savez(path, input_0=good)
    assert len(load_inputs_file(str(path), example, what="test vectors file", stage="load model",
                                ranges=ranges)) == 1
    bad = good.copy()
    bad[0, 1, 2] = 7  # column 2's table has 7 rows: 7 is out, though the other tables take it
    np.savez(path, input_0=bad)
    with pytest.raises(ExportError) as ei:
        load_inputs_file(str(path), example, what="test vectors file", stage="load model", ranges=ranges)
    text = ei.value.message
    assert "v.npz" in text and "(1, 2)" in text and "7 rows" in text and "tables.2" in text


class NoValidValue(nn.Module):
    """The id indexes a 3-row table *and* is used as a number; the example's values 5..9 only fit
    the arithmetic, so no value fits both."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 4)

    def forward(self, ids):
        return self.emb(ids[:, :1]).sum() + ids[:, 1:].float().sum()


def test_an_input_whose_range_cannot_be_derived_is_refused_naming_it_and_the_way_out():
    ex = (torch.tensor([[0, 5]]),)
    model = NoValidValue().eval()
    ranges = input_ranges(torch.export.export(model, ex, strict=False), ex)
    assert ranges[0].problem is None  # column 0 only indexes, column 1 only counts: both derivable
    samples = generated_like(ex, 50, 0, ranges)
    assert all(0 <= int(s[0][0, 0]) <= 2 for s in samples)

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(3, 4)

        def forward(self, ids):
            return self.emb(ids).sum() + ids.float().sum()

    ex = (torch.tensor([[5, 9]]),)
    ranges = input_ranges(torch.export.export(Both().eval(), ex, strict=False), ex)
    assert ranges[0].problem
    assert len(generated_like(ex, 1, 0, ranges)) == 1  # the example alone needs nothing generated
    with pytest.raises(ExportError) as ei:
        generated_like(ex, 4, 0, ranges, names=["ids"])
    assert "ids" in ei.value.message and "--vectors FILE.npz" in ei.value.hint


def test_a_recommender_exports_and_verifies(tmp_path):
    """The issue's failure end to end: `write failed: IndexError` before; a verified artifact now."""
    from edgerun.export import export_model

    torch.manual_seed(0)
    model = BySelect().eval()
    m = export_model(model, "host", "fp32", tmp_path / "rec", example_inputs=(torch.tensor([[1, 2, 3, 4]]),))
    assert m.status == "ok", m.verification.failures
    cols = np.stack([m.load_test_vector(i).inputs[0][0] for i in range(len(m.test_vectors))])
    assert (cols < np.array(SIZES)).all() and (cols >= 0).all()
