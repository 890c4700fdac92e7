"""`winclip download`: fetch weights into the local cache, for later offline runs."""

from __future__ import annotations

import sys

from .. import backbone
from ..errors import ExitCode, UsageError
from ..options import LOCAL_DIR


def download_weights(model: str, pretrained: str) -> ExitCode:
    """Fetch the weights and print where they are (WeightsUnavailableError, exit 4, when
    they can't be fetched)."""
    if model.startswith(LOCAL_DIR):
        raise UsageError(f"nothing to download: {model} is read from its folder")
    # By module: tests replace it. Offline, the message must not send the user here.
    path = backbone.fetch_pretrained(model, pretrained, downloading=True)
    print(str(path), file=sys.stdout, flush=True)
    return ExitCode.OK
