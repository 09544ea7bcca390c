"""Networks: a set of peer classifiers trained together and combined at inference."""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from alr_monai.algorithms.acquisition import add_dropout_before_last_linear, find_last_linear


class PeerEnsemble(nn.Module):
    """``num_peers`` independently initialised copies of one classifier; forward sums their logits.

    Co-teaching trains the peers on each other's small-loss picks; inference combines them by the sum of
    logits. Built from a factory (``"_mode_": "callable"`` in a bundle config) so every peer gets its own
    random initialisation.

    Args:
        network_factory: callable returning a fresh classifier (any ``monai.networks.nets`` class works).
        num_peers: how many peers (2 for co-teaching, 1 for a plain single-network baseline).
        dropout: if > 0, a Dropout layer is inserted before each peer's last linear layer, which MC-dropout
            BALD needs; a network with no dropout makes every MC sample identical (BALD would be all zeros).
    """

    def __init__(self, network_factory: Callable[[], nn.Module], num_peers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if num_peers < 1:
            raise ValueError(f"num_peers must be >= 1, got {num_peers}")
        peers = [network_factory() for _ in range(num_peers)]
        if dropout > 0:
            peers = [add_dropout_before_last_linear(peer, dropout) for peer in peers]
        self.peers = nn.ModuleList(peers)

    @property
    def num_peers(self) -> int:
        return len(self.peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain loop over the ModuleList keeps the ensemble scriptable for ckpt_export.
        outputs: list[torch.Tensor] = []
        for peer in self.peers:
            outputs.append(peer(x))
        return torch.stack(outputs, 0).sum(0)


class FeatureTap:
    """Captures the input of a network's last linear layer (the penultimate features) on every forward.

    The closed-form last-layer gradient used by VoG and the coreset embeddings both need these features; a
    forward hook gets them from the forward pass already being done.
    """

    def __init__(self, network: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = find_last_linear(network).register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        self.features = inputs[0]

    def pop(self) -> torch.Tensor:
        """Return the features of the last forward and forget them."""
        if self.features is None:
            raise RuntimeError("no forward pass has run since the last pop()")
        features, self.features = self.features, None
        return features

    def remove(self) -> None:
        self._handle.remove()


def load_weights(
    network: nn.Module, path: str | Path, map_location=None, hint: str = "the checkpoint comes from another network"
) -> nn.Module:
    """Load a saved model (a bare state dict, or ``{"model": state_dict}`` as MONAI's savers write) into ``network``.

    Args:
        network: the network to fill, built with the settings the checkpoint was trained with.
        path: the ``.pt`` file.
        map_location: passed to ``torch.load``.
        hint: what to check when the file does not fit ``network`` (appended to the error).

    Returns:
        ``network``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` cannot be read as a checkpoint, or its weights do not fit ``network``; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise ValueError(f"model file {path} cannot be read ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"model file {path} holds a {type(state).__name__}, not a state dict")
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"model file {path} does not fit this network ({error}); {hint}") from error
    return network


# Classifiers a user picks by name (``network_name``); ``None`` keeps the bundle's ``network_factory``.
NETWORK_NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0")


def build_classifier(name: str, spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """One of MONAI's standard classifiers by name, randomly initialised (``pretrained=False``: nothing is downloaded).

    The ResNets downsample in their first convolution (``conv1_t_stride=2``, as torchvision's and MedicalNet's do;
    MONAI's default stride 1 costs about 4x the FLOPs at the same input size). Every network ends in one
    ``nn.Linear`` whose input is the pooled feature vector, which :class:`FeatureTap` (VoG, coreset, prototypes)
    and MC-dropout BALD use.

    Args:
        name: one of :data:`NETWORK_NAMES`.
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels.
        num_classes: output logits.

    Returns:
        The network.

    Raises:
        ValueError: an unknown ``name`` (the message lists the choices) or ``spatial_dims`` other than 2 or 3.
    """
    from monai.networks import nets

    if spatial_dims not in (2, 3):
        raise ValueError(f"network {name!r}: spatial_dims must be 2 or 3, got {spatial_dims}")
    resnets = {"resnet18": nets.resnet18, "resnet34": nets.resnet34, "resnet50": nets.resnet50}
    if name in resnets:
        return resnets[name](
            pretrained=False,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
            conv1_t_stride=2,
        )
    if name == "densenet121":
        return nets.DenseNet121(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, pretrained=False
        )
    if name == "efficientnet-b0":
        return nets.EfficientNetBN(
            "efficientnet-b0",
            pretrained=False,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
        )
    raise ValueError(f"unknown network_name {name!r}; choose one of: {', '.join(NETWORK_NAMES)} (or null)")


def classifier_factory(
    name: str | None, spatial_dims: int, in_channels: int, num_classes: int, default: Callable[[], nn.Module]
) -> Callable[[], nn.Module]:
    """The peer factory a bundle uses: ``default`` (its ``network_factory``) when ``name`` is None, else the named one.

    Returns a ``functools.partial`` of :func:`build_classifier`, so ``models/metadata.json`` records the name
    (:func:`alr_monai.export.network_config`). The name is checked here, before anything is trained.
    """
    if name is None:
        return default
    if name not in NETWORK_NAMES:
        raise ValueError(f"unknown network_name {name!r}; choose one of: {', '.join(NETWORK_NAMES)} (or null)")
    return functools.partial(
        build_classifier,
        name=name,
        spatial_dims=int(spatial_dims),
        in_channels=int(in_channels),
        num_classes=int(num_classes),
    )
