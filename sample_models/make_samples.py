"""Build the bundled sample models, deterministically: python sample_models/make_samples.py.

Every model is seeded, so rerunning the script gives the same weights (torch.save's zip also
stores a random serialization id, so the bytes of .pt files differ; the tensors do not).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent


def mlp() -> nn.Module:
    """A 784-64-32-10 MLP with ReLUs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def cnn() -> nn.Module:
    """A small CNN for 3x16x16 inputs: plain, strided and depthwise convs, then a linear head."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()


def sn_discriminator() -> nn.Module:
    """A DCGAN-style discriminator with torch's spectral_norm, trained a few steps so u, v are real."""
    torch.manual_seed(2)
    sn = nn.utils.spectral_norm
    net = nn.Sequential(
        sn(nn.Conv2d(3, 16, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
        sn(nn.Conv2d(16, 32, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
        nn.Flatten(), sn(nn.Linear(32 * 4 * 4, 1)),
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad()
        net(torch.randn(8, 3, 16, 16)).mean().backward()
        opt.step()
    return net.eval()


def generator_parametrized() -> nn.Module:
    """A small generator with the parametrizations API of spectral_norm, ConvTranspose included."""
    torch.manual_seed(3)
    sn = nn.utils.parametrizations.spectral_norm
    net = nn.Sequential(
        sn(nn.Linear(16, 32 * 4 * 4)), nn.ReLU(), nn.Unflatten(1, (32, 4, 4)),
        sn(nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)), nn.ReLU(),
        sn(nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1)), nn.Tanh(),
    )
    for _ in range(3):
        net(torch.randn(4, 16))
    return net.eval()


def export_all(name: str, net: nn.Module, example: torch.Tensor) -> None:
    """Save one model as state_dict, TorchScript, safetensors and ONNX."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, HERE / f"{name}.pt")
    torch.jit.trace(net, example).save(str(HERE / f"{name}.torchscript.pt"))
    save_file(state, str(HERE / f"{name}.safetensors"), metadata={"source": "lipcheck sample_models"})
    torch.onnx.export(net, (example,), str(HERE / f"{name}.onnx"), dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=17)


def main() -> None:
    """Write every sample into this folder."""
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(True)
    export_all("mlp", mlp(), torch.randn(1, 784))
    export_all("cnn", cnn(), torch.randn(1, 3, 16, 16))

    disc = sn_discriminator()
    torch.save(disc.state_dict(), HERE / "sn_discriminator.pt")
    gen = generator_parametrized()
    torch.save(gen.state_dict(), HERE / "sn_generator.pt")

    # A PyTorch Lightning-style checkpoint: the model under state_dict with a "model." prefix,
    # next to optimizer state, schedulers and hyper-parameters.
    net = mlp()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 784)).sum().backward()
    opt.step()
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 1e-3, "hidden": 64},
        },
        HERE / "lightning.ckpt",
    )
    print(f"wrote samples to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
