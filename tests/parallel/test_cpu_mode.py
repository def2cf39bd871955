"""CPU test mode flags: simulated device count plus the deadlock-free XLA:CPU schedule."""

from lr_jax.parallel.cpu_mode import SCHEDULER_FLAG, simulate_devices, xla_flags


def test_adds_both_flags_and_keeps_the_callers() -> None:
    flags = xla_flags(4, "--xla_dump_to=/tmp/d").split()
    assert flags == ["--xla_dump_to=/tmp/d", "--xla_force_host_platform_device_count=4",
                     f"{SCHEDULER_FLAG}=false"]
    # A device count or schedule the caller chose wins.
    chosen = f"--xla_force_host_platform_device_count=2 {SCHEDULER_FLAG}=true"
    assert xla_flags(8, chosen) == chosen


def test_simulate_devices_sets_platform_unless_chosen() -> None:
    env = simulate_devices(8, {})
    assert env["JAX_PLATFORMS"] == "cpu" and "device_count=8" in env["XLA_FLAGS"]
    assert simulate_devices(8, {"JAX_PLATFORMS": "tpu"})["JAX_PLATFORMS"] == "tpu"
