"""Hardware profile: what a board offers and what is kept for the OS and the agent."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.models._base import Frozen, Name


class CoreSpec(Frozen):
    """One logical CPU of the board."""

    id: int = Field(ge=0)
    """Logical CPU number as the kernel numbers it (``/sys/devices/system/cpu/cpuN``)."""
    model: str = "generic"
    """Core model, e.g. ``cortex-a72``; informational."""
    cluster: str = "default"
    """Cluster the core belongs to (big.LITTLE boards have more than one)."""
    relative_speed: float = Field(default=1.0, gt=0)
    """Throughput relative to the board's reference core (1.0); the simulator uses it."""
    max_freq_mhz: int | None = Field(default=None, gt=0)
    """Maximum clock from the vendor's data sheet, MHz."""


class Reserve(Frozen):
    """Resources kept for the OS and the agent; partitions never get them."""

    cores: list[int] = Field(min_length=1)
    """Cores the OS and the agent run on; never dedicated to a partition."""
    cpu_fraction: float = Field(default=0.2, ge=0, lt=1)
    """Fraction of each reserved core kept free of partition budgets."""
    memory_mib: int = Field(ge=0)
    """Memory kept for the OS and the agent, MiB."""
    pids: int = Field(default=512, ge=0)
    """Process ids kept for the OS and the agent."""


class QemuSpec(Frozen):
    """How QEMU emulates this board."""

    machine: str
    """``-M`` value, e.g. ``virt`` or ``q35``."""
    cpu: str
    """``-cpu`` value, e.g. ``cortex-a53`` or ``max``."""
    console: str
    """Kernel console device: ``ttyS0`` (x86) or ``ttyAMA0`` (arm)."""


class BootSpec(Frozen):
    """How the real board boots its disk."""

    firmware: Literal["uefi", "raspberrypi"] = "uefi"
    """``uefi``: the board's UEFI (or U-Boot's EFI) loads GRUB from the EFI system
    partition. ``raspberrypi``: the Pi's boot ROM and firmware (``config.txt``) load
    U-Boot, whose EFI loads the same GRUB."""
    console: str | None = None
    """The serial console of the bootloader and kernel on the real board (``ttyS0``,
    ``ttyAMA0``, ``ttyS1`` on a Raspberry Pi 4); default the QEMU console."""
    dtb: str | None = None
    """``raspberrypi``: the device tree, as a path in the kernel package's DTB directory
    (``broadcom/bcm2711-rpi-4-b.dtb``)."""


class HardwareProfile(Frozen):
    """Description of one kind of board."""

    name: Name
    """Board name; missions target it and nodes are labelled with it."""
    description: str = ""
    """Free text for people."""
    vendor: str = ""
    """Manufacturer."""
    datasheet: str = ""
    """Where the figures come from (vendor document and section)."""
    arch: Literal["x86_64", "aarch64"]
    """Machine architecture as ``uname -m`` prints it."""
    cores: list[CoreSpec] = Field(min_length=1)
    """Every logical CPU the OS sees."""
    memory_mib: int = Field(gt=0)
    """Memory available to Linux, MiB."""
    max_pids: int = Field(default=32768, gt=0)
    """Process ids the kernel hands out (``kernel.pid_max``)."""
    reserved: Reserve
    """What the OS and the agent keep."""
    qemu: QemuSpec | None = None
    """QEMU emulation settings, where the board can be emulated."""
    boot: BootSpec = BootSpec()
    """How the flashed disk boots on the real board."""

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        ids = [c.id for c in self.cores]
        if len(set(ids)) != len(ids):
            raise ValueError(f"cores: duplicate core ids in {ids}")
        missing = sorted(set(self.reserved.cores) - set(ids))
        if missing:
            raise ValueError(f"reserved.cores: cores {missing} are not in cores")
        if self.boot.firmware == "raspberrypi" and not self.boot.dtb:
            raise ValueError("boot.dtb: the Raspberry Pi firmware needs the board's device "
                             "tree (e.g. broadcom/bcm2711-rpi-4-b.dtb)")
        if self.reserved.memory_mib >= self.memory_mib:
            raise ValueError(
                f"reserved.memory_mib: {self.reserved.memory_mib} leaves nothing of "
                f"memory_mib {self.memory_mib}"
            )
        return self

    @property
    def core_ids(self) -> frozenset[int]:
        return frozenset(c.id for c in self.cores)

    def core_capacity(self, core: int) -> float:
        """CPU fraction of ``core`` that partitions may be budgeted."""
        return 1.0 - self.reserved.cpu_fraction if core in self.reserved.cores else 1.0
