"""The ``zipformer`` package's model modules, imported without its ``__init__``.

    from llmasr.zipformer.pkg import zipformer_modules
    zf = zipformer_modules()            # zf.Zipformer, zf.Conv2dSubsampling, zf.ScaledLinear, ...

``zipformer`` 0.1.3 (k2-fsa, Apache-2.0) declares ``torch<2.8`` and its package ``__init__`` (and
``zipformer.utils``'s) import torchaudio and ``atdataset``, which the encoder never uses.  It is
installed ``--no-deps`` (scripts/setup.sh) and only ``modules/scaling.py``, ``subsampling.py`` and
``zipformer.py`` (the encoder) and ``optim.py`` (ScaledAdam, Eden) are loaded: they import torch
and, from ``zipformer.utils``, ``torch_autocast`` (and ``fix_random_seed`` in optim's self-test)
alone.  So ``zipformer`` and ``zipformer.utils`` are registered here as bare package modules (the
files' folder as their path, their ``__init__`` not run) with those functions as
``zipformer/utils/utils.py`` and atdataset define them (that file imports kaldialign).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import random
import sys
import types
from pathlib import Path

import torch


@contextlib.contextmanager
def torch_autocast(device_type: str = "cuda", **kwargs):
    """``zipformer.utils.torch_autocast`` for torch >= 2.3."""
    with torch.amp.autocast(device_type=device_type, **kwargs):
        yield


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """(B,) lengths -> (B, max(max_len, lengths.max())) bool, True at padded positions."""
    max_len = max(max_len, int(lengths.max()))
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def fix_random_seed(seed: int) -> None:
    """``atdataset.fix_random_seed``: the Python and torch generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def _eager(fn, *args, **kwargs):
    return fn


def _root() -> Path:
    spec = importlib.util.find_spec("zipformer")  # finds the package without running its __init__
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(
            "the zipformer package is not installed: .venv/bin/pip install --no-deps zipformer==0.1.3 "
            "(scripts/setup.sh does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def zipformer_modules() -> types.SimpleNamespace:
    """The classes this project uses from ``zipformer.modules`` (loaded once per process)."""
    if "zipformer.modules.zipformer" not in sys.modules:
        root = _root()
        if "zipformer" not in sys.modules:
            pkg = types.ModuleType("zipformer")
            pkg.__path__ = [str(root)]
            sys.modules["zipformer"] = pkg
        if "zipformer.utils" not in sys.modules:
            utils = types.ModuleType("zipformer.utils")
            utils.__path__ = [str(root / "utils")]
            utils.torch_autocast = torch_autocast
            utils.make_pad_mask = make_pad_mask
            utils.fix_random_seed = fix_random_seed
            sys.modules["zipformer.utils"] = utils
        if "zipformer.modules" not in sys.modules:
            mods = types.ModuleType("zipformer.modules")
            mods.__path__ = [str(root / "modules")]
            sys.modules["zipformer.modules"] = mods
    scaling = importlib.import_module("zipformer.modules.scaling")
    # The Swoosh activations are wrapped in torch.compile when their modules are built; on the CPU
    # that compiles C++ in every new process (minutes on 2 cores) for element-wise functions.  The
    # wrapper is looked up at build time, so eager functions are used from here on.
    scaling.torch_compile = _eager
    subsampling = importlib.import_module("zipformer.modules.subsampling")
    encoder = importlib.import_module("zipformer.modules.zipformer")
    optim = importlib.import_module("zipformer.modules.optim")
    return types.SimpleNamespace(
        Zipformer=encoder.Zipformer,
        Conv2dSubsampling=subsampling.Conv2dSubsampling,
        ScaledLinear=scaling.ScaledLinear,
        ScheduledFloat=scaling.ScheduledFloat,
        Balancer=scaling.Balancer,
        ScaledAdam=optim.ScaledAdam,
        Eden=optim.Eden,
    )
