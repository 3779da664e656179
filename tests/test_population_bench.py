"""benchmarks/population.py in its tiny setting: it runs K = 1 and 2 members in one step beside
K single-model steps for the MNIST DCGAN and classifier, and writes a record with both
contestants' figures, the ratio per K and XLA's memory per K. No timing is asserted: the
figures depend on the machine."""

import json

from benchmarks import population as population_bench

TIMED_KEYS = {"images_per_s", "images_per_s_std", "ms_per_step", "ms_per_step_std",
              "steps_per_round", "rounds"}


def test_population_benchmark_tiny_writes_its_record(tmp_path):
    population_bench.main(["--tiny", "--out", str(tmp_path), "--tag", "test"])
    record = json.loads((tmp_path / "population_test.json").read_text())
    assert record["benchmark"] == "population" and record["tiny"] is True
    assert {"date", "commit", "versions", "backend", "num_devices"} <= set(record)
    assert set(record["results"]) == {"dcgan_mnist", "cls_mnist"}
    for name, entry in record["results"].items():
        assert entry["config"].endswith(":smoke"), name
        for k in (1, 2):
            together, apart = entry[f"population_{k}"], entry[f"separate_{k}"]
            assert "error" not in together and "error" not in apart, (together, apart)
            assert TIMED_KEYS <= set(together) and TIMED_KEYS <= set(apart)
            assert together["compile_s"] > 0
            row = entry["per_members"][str(k)]
            assert row["population_over_separate"] > 0
            assert row["population_ms_per_member"] > 0
        # Two members' state and activations take more memory than one member's.
        memory = entry["per_members"]
        assert memory["2"]["xla_argument_plus_temp_bytes"] > memory["1"][
            "xla_argument_plus_temp_bytes"]


def test_member_counts_are_parsed_and_checked():
    assert population_bench.parse_args(["--tiny"]).members == (1, 2)
    assert population_bench.parse_args(["--members", "1,4"]).members == (1, 4)
    for bad in ("0,2", "two"):
        try:
            population_bench.parse_args(["--members", bad])
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"--members {bad} was accepted")
