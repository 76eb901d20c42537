"""Vela's CSVs are untrusted once in an artifact: read strictly (export/arm/vela.py). No toolchain needed."""

from __future__ import annotations

import pytest

from edgerun.export.arm.vela import VelaReportError, read_layers, read_summary

HEAD = ("experiment,network,accelerator_configuration,system_config,memory_mode,core_clock,batch_size,"
        "inference_time,sram_memory_used,dram_memory_used,on_chip_flash_memory_used,off_chip_flash_memory_used,"
        "nn_macs,cycles_npu,cycles_total")


def _row(**over) -> str:
    v = {"accelerator_configuration": "Ethos_U55_128", "system_config": "Ethos_U55_High_End_Embedded",
         "memory_mode": "Shared_Sram", "core_clock": "500000000.0", "batch_size": "1", "inference_time": "7.2432e-05",
         "sram_memory_used": "1.078125", "dram_memory_used": "0.0", "on_chip_flash_memory_used": "0.0",
         "off_chip_flash_memory_used": "33.90625", "nn_macs": "47232", "cycles_npu": "7304", "cycles_total": "36216"}
    v.update(over)
    return HEAD + "\ndefault,out," + ",".join(v[k] for k in HEAD.split(",")[2:]) + "\n"


def test_a_summary_reads_into_bytes_and_cycles(tmp_path):
    p = tmp_path / "out_summary_x.csv"
    p.write_text(_row())
    s = read_summary(p)
    assert (s.cycles_total, s.cycles_npu, s.nn_macs, s.sram_bytes, s.off_chip_flash_bytes) == (
        36216, 7304, 47232, 1104, 34720)
    assert s.inference_seconds == pytest.approx(36216 / 500e6)


@pytest.mark.parametrize("over, words", [
    ({"cycles_total": "-5"}, "cycles_total"),
    ({"cycles_npu": "99999"}, "exceeds cycles_total"),
    ({"inference_time": "1.0"}, "disagrees"),
    ({"core_clock": "nan"}, "core_clock"),
    ({"nn_macs": "12.5"}, "whole number"),
    ({"system_config": "\x1b[31mred"}, "system_config"),
    ({"batch_size": "4"}, "batch_size"),
])
def test_a_changed_summary_is_refused_naming_the_field(tmp_path, over, words):
    p = tmp_path / "out_summary_x.csv"
    p.write_text(_row(**over))
    with pytest.raises(VelaReportError, match=words):
        read_summary(p)


def test_per_layer_rows_need_a_target_and_numbers(tmp_path):
    head = ("Original Operator,NNG Operator,Target,Staging Usage,Peak% (Staging),Op Cycles,Network% (cycles),NPU,"
            "SRAM AC,DRAM AC,OnFlash AC,OffFlash AC,MAC Count,Network% (MAC),Util% (MAC),Name\n")
    p = tmp_path / "per-layer.csv"
    p.write_text(head + "Conv2D,Conv2D,NPU,1104,100.0,1456,4.0,1456,200,0,0,80,13824,29.2,7.4,tosa_rescale_default\n")
    (layer,) = read_layers(p)
    assert (layer.op, layer.target, layer.cycles, layer.macs) == ("Conv2D", "NPU", 1456, 13824)
    p.write_text(head + "Conv2D,Conv2D,GPU,1,1,1,1,1,1,0,0,0,1,1,1,x\n")
    with pytest.raises(VelaReportError, match="Target"):
        read_layers(p)
    p.write_bytes(b"x" * (5 << 20))
    with pytest.raises(VelaReportError, match="bytes"):
        read_layers(p)


def test_board_sizes_parse_or_are_refused():
    from edgerun.core.errors import UsageError
    from edgerun.estimate import parse_size

    assert parse_size("512KiB", "--sram") == 512 * 1024 and parse_size("2MiB", "--flash") == 2 << 20
    assert parse_size("1.5MB", "--flash") == 1_500_000 and parse_size("65536", "--sram") == 65536
    for bad in ("", "4QB", "-1KiB", "0", "KiB"):
        with pytest.raises(UsageError, match="not a memory size"):
            parse_size(bad, "--sram")
