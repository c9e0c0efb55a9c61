"""The graph models of issue 11 in PyTorch, defined once for every peer script (f32, PTQ, Brevitas QAT, ONNX export).

resnet20 (`resnet(n=3)`, depth 6n+2): the CIFAR ResNet of He et al. 2016, sec. 4.2.
  stem   conv 3x3, C_in->16, stride 1, pad 1, no bias; BN; ReLU
  stage  s = 1, 2, 3 with 16, 32, 64 channels, n basic blocks each; the first block of stages 2 and 3 has stride 2
  block  conv 3x3 stride s pad 1 no bias; BN; ReLU; conv 3x3 stride 1 pad 1 no bias; BN; + shortcut; ReLU
  shortcut where the shape is unchanged: identity. Where it changes (first block of stages 2 and 3):
    option "A": x[:, :, ::2, ::2] (rows and columns 0, 2, 4, ...), then zero channels, (C_out - C_in) // 2 before
                and the rest after (16 -> 32: 8 zero planes, the 16 input planes, 8 zero planes; the convention of
                the common PyTorch CIFAR ResNets, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)));
    option "B": conv 1x1 stride 2 no bias; BN.
  head   global average pool; fully connected 64 -> 10 with bias.
  28x28 input: 28 -> 28 -> 14 -> 7 spatially (3x3 stride 2 pad 1: out = (in - 1) // 2 + 1); 32x32: 32 -> 16 -> 8.

mobilenet (`mobilenet()`): a small MobileNetV2-style net.
  stem   conv 3x3, C_in->16, stride 1, pad 1, no bias; BN; ReLU6
  blocks inverted residuals (t, c, n, s) = (1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2): n blocks of c
         output channels, the first with stride s, the others stride 1. Each block, from C_in channels:
           expand  conv 1x1 C_in -> t*C_in no bias; BN; ReLU6   (omitted when t == 1, as in MobileNetV2)
           dw      conv 3x3 depthwise (groups = t*C_in) stride s pad 1 no bias; BN; ReLU6
           project conv 1x1 t*C_in -> c no bias; BN                (linear bottleneck: no activation)
           + block input when s == 1 and C_in == c (here: block 1 and the second block of each later group)
  head   conv 1x1 64 -> 128 no bias; BN; ReLU6; global average pool; fully connected 128 -> 10 with bias.
  28x28 input: 28 -> 28 -> 14 -> 7 -> 4; 32x32: 32 -> 16 -> 8 -> 4.

Batch norm everywhere: PyTorch's defaults (eps 1e-5, momentum 0.1, gamma 1, beta 0; eval uses running stats).
Initialisation (`init`): "pytorch" leaves PyTorch's layer defaults (Conv2d / Linear weights kaiming_uniform_ with
a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Linear bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)));
"glorot" is lowbit's convention (Glorot-uniform with fan_in = C_in/groups*kh*kw, fan_out = C_out/groups*kh*kw,
zero Linear bias).

Quantization points. The builders take a `layers` factory; `FloatLayers` (the default) makes plain modules, and
resnet_quant.BrevitasLayers makes Brevitas ones with the same attribute names, so an f32 state_dict loads into the
quantized twin. The factory calls mark where a quantizer sits:
  layers.conv(..., first=True) / layers.linear(..., last=True): the first and last layer (own weight bit width);
  layers.relu() / layers.relu6(): the activation after it is quantized unsigned (inputs of the next convolutions);
  layers.pre_add(): the residual operand from the BN (and option B's shortcut BN) before the add, signed;
  layers.signed(): a signed value feeding a convolution (MobileNet's projections);
  layers.head(): the pooled features entering the fully connected layer, unsigned.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class FloatLayers:
    """Plain PyTorch modules; the quantization points are identities."""

    def conv(self, cin, cout, k, stride=1, groups=1, first=False):
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)

    def linear(self, cin, cout, last=True):
        return nn.Linear(cin, cout)

    def relu(self):
        return nn.ReLU()

    def relu6(self):
        return nn.ReLU6()

    def pre_add(self):
        return nn.Identity()

    def signed(self):
        return nn.Identity()

    def head(self):
        return nn.Identity()


class ShortcutA(nn.Module):
    """Option A: subsample by `stride`, then zero channels (C_out - C_in) // 2 before and the rest after."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.front = (cout - cin) // 2
        self.back = cout - cin - self.front

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, option, layers):
        super().__init__()
        self.conv1 = layers.conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = layers.relu()
        self.conv2 = layers.conv(cout, cout, 3, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.q_branch = layers.pre_add()
        self.shortcut = None
        if stride != 1 or cin != cout:
            if option == "A":
                self.shortcut = ShortcutA(cin, cout, stride)
            else:
                self.shortcut = nn.Sequential(layers.conv(cin, cout, 1, stride), nn.BatchNorm2d(cout),
                                              layers.pre_add())
        self.act_out = layers.relu()

    def forward(self, x):
        y = self.q_branch(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.act_out(y + s)


class ResNet(nn.Module):
    def __init__(self, n=3, option="A", in_channels=1, classes=10, layers=None):
        super().__init__()
        if option not in ("A", "B"):
            raise ValueError(f"shortcut option must be A or B, not {option!r}")
        layers = layers or FloatLayers()
        self.conv = layers.conv(in_channels, 16, 3, 1, first=True)
        self.bn = nn.BatchNorm2d(16)
        self.act = layers.relu()
        blocks = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, option, layers))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.q_head = layers.head()
        self.fc = layers.linear(64, classes, last=True)

    def forward(self, x):
        x = self.blocks(self.act(self.bn(self.conv(x))))
        return self.fc(self.q_head(torch.flatten(self.pool(x), 1)))


MOBILENET_CONFIG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2))
MOBILENET_STEM = 16
MOBILENET_HEAD = 128


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, t, stride, layers):
        super().__init__()
        hidden = cin * t
        self.expand = None
        if t != 1:
            self.expand = nn.Sequential(layers.conv(cin, hidden, 1), nn.BatchNorm2d(hidden), layers.relu6())
        self.dw = nn.Sequential(layers.conv(hidden, hidden, 3, stride, groups=hidden), nn.BatchNorm2d(hidden),
                                layers.relu6())
        self.residual = stride == 1 and cin == cout
        # The projection feeds the add (residual) or the next block's convolutions directly.
        self.project = nn.Sequential(layers.conv(hidden, cout, 1), nn.BatchNorm2d(cout),
                                     layers.pre_add() if self.residual else layers.signed())
        self.q_out = layers.signed() if self.residual else nn.Identity()

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        return self.q_out(x + y) if self.residual else y


class MobileNet(nn.Module):
    def __init__(self, config=MOBILENET_CONFIG, stem=MOBILENET_STEM, head=MOBILENET_HEAD, in_channels=1, classes=10,
                 layers=None):
        super().__init__()
        layers = layers or FloatLayers()
        self.stem = nn.Sequential(layers.conv(in_channels, stem, 3, 1, first=True), nn.BatchNorm2d(stem),
                                  layers.relu6())
        blocks = []
        cin = stem
        for t, c, n, s in config:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, t, s if i == 0 else 1, layers))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(layers.conv(cin, head, 1), nn.BatchNorm2d(head), layers.relu6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.q_head = layers.head()
        self.fc = layers.linear(head, classes, last=True)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.q_head(torch.flatten(self.pool(x), 1)))


def glorot_(model):
    """lowbit's initialisation: Glorot-uniform over the fans one output / one input sees; zero Linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            area = m.kernel_size[0] * m.kernel_size[1]
            fan_in = m.in_channels // m.groups * area
            fan_out = m.out_channels // m.groups * area
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(m.weight, -limit, limit)
        elif isinstance(m, nn.Linear):
            limit = math.sqrt(6.0 / (m.in_features + m.out_features))
            nn.init.uniform_(m.weight, -limit, limit)
            nn.init.zeros_(m.bias)


MODELS = ("resnet20", "resnet20b", "mobilenet")


def make_model(name, in_channels=1, init="pytorch", layers=None):
    """`resnet20` (option A), `resnet20b` (option B), `resnetN[b]` for any N = 6n+2, or `mobilenet`."""
    if name == "mobilenet":
        model = MobileNet(in_channels=in_channels, layers=layers)
    elif name.startswith("resnet"):
        spec = name[len("resnet"):]
        option = "B" if spec.endswith("b") else "A"
        depth = spec.rstrip("ab")
        if not depth.isdigit() or (int(depth) - 2) % 6 or int(depth) < 8:
            raise ValueError(f"{name}: ResNet depth must be 6n+2 with n >= 1 (e.g. resnet20, resnet32b)")
        model = ResNet(n=(int(depth) - 2) // 6, option=option, in_channels=in_channels, layers=layers)
    else:
        raise ValueError(f"unknown model {name!r} (resnet20, resnet20b, resnetN[b], mobilenet)")
    if init == "glorot":
        glorot_(model)
    elif init != "pytorch":
        raise ValueError(f"unknown init {init!r} (pytorch, glorot)")
    return model


def count_macs(model, shape):
    """Multiply-accumulates of one forward pass of one sample of `shape` (C, H, W): convolutions and Linear layers
    (batch norm, activations, adds and pooling are not counted)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out[0].numel() * k
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def param_count(model):
    return sum(p.numel() for p in model.parameters())
