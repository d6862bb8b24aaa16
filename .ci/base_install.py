"""The Dask executor from a plain install (``pip install graphexec``, no extras), as a user gets it.

``make test`` runs this in ``.venv-base``, a venv holding the package and its declared
dependencies only (torch from constraints.txt): the dev venv's extras (matplotlib brings numpy)
would hide a dependency the package needs but does not declare, as numpy once was (Dask's
tensor serializer needs it). Exits non-zero when the run fails or differs from eager PyTorch.
"""

import sys

import torch
import torch.nn as nn

import graphexec as gx


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def main() -> int:
    torch.manual_seed(0)
    model, x = TwoBranches().eval(), torch.randn(4, 8)
    with torch.no_grad(), gx.DaskExecutor(n_workers=1, threads_per_worker=1) as ex:
        got = ex.run(gx.plan(gx.trace(model)), x)
        torch.testing.assert_close(got, model(x))
    if "site-packages" not in gx.__file__:
        sys.exit(f"base install: imported graphexec from {gx.__file__}, not the installed copy")
    print(f"base install: the Dask executor matches eager PyTorch (graphexec at {gx.__file__})")
    return 0


if __name__ == "__main__":  # Dask's worker processes re-import this file
    sys.exit(main())
