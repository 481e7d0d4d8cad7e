"""Choose where torch work runs: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

CHOICES = ("auto", "cuda", "mps", "cpu")


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names of the devices this machine can use, best first (always ends with ``cpu``)."""
    import torch

    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available(torch):
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(device="auto"):
    """Return a ``torch.device`` for ``device``.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (best available), ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"``.

    Raises
    ------
    ValueError
        If an explicitly requested device is unknown or not available on this machine.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = str(device or "auto").lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in CHOICES:
        raise ValueError(f"Unknown device {device!r}: choose one of {', '.join(CHOICES)}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "A CUDA GPU was requested but none is available here; use 'auto' or 'cpu'."
        )
    if kind == "mps" and not _mps_available(torch):
        raise ValueError("Apple MPS was requested but is not available here; use 'auto' or 'cpu'.")
    return torch.device(name)


def describe_device(device) -> str:
    """A short human label such as ``'cuda:0 (NVIDIA H100)'`` or ``'cpu (2 threads)'``."""
    import torch

    device = resolve_device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return str(device)
