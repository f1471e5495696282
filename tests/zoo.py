"""Small models of the kinds users bring, for tests: none of them is ours to special-case."""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, sizes=(64, 30, 20, 10)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """LeNet-like: conv-bn-relu-pool twice, flatten, two Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + idt)


class TinyResNet(nn.Module):
    """ResNet-like: stem, two residual stages (one with a 1x1 downsample), global pool, Linear head."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseNet(nn.Module):
    """MobileNet-like: a depthwise and a grouped convolution between pointwise ones."""

    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.pw2 = nn.Conv2d(16, 8, 1)
        self.conv1d = nn.Conv1d(8, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16, 5)

    def forward(self, x):
        x = torch.relu(self.pw1(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.grouped(x))
        x = self.pw2(x)  # (B, 8, 4, 4)
        x = self.conv1d(x.flatten(2))  # (B, 4, 16)
        return self.head(x.flatten(1))


class TinyTransformer(nn.Module):
    """Token embedding, one pre-norm self-attention block built from Linear and LayerNorm, a Linear head."""

    def __init__(self, vocab=50, dim=32, heads=4, seq=12):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, seq, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.ff2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens) + self.pos[:, : tokens.shape[1]]
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.ff2(torch.relu(self.ff1(self.ln2(x))))
        return self.head(x)


def example_inputs():
    """(model, example input) pairs for every zoo model, seeded."""
    torch.manual_seed(0)
    return {
        "mlp": (MLP(), torch.randn(2, 64)),
        "cnn": (SmallCNN(), torch.randn(2, 1, 8, 8)),
        "resnet": (TinyResNet(), torch.randn(2, 3, 16, 16)),
        "depthwise": (DepthwiseNet(), torch.randn(2, 3, 4, 4)),
        "transformer": (TinyTransformer(), torch.randint(0, 50, (2, 12))),
    }


# ---------------------------------------------------------------------- eval data factories (tests)


def digits_eval_tuple():
    """The digits test split as (inputs array, labels array): the first 100 images."""
    from explorer.engine.model.data import digits_split

    test = digits_split()[1]
    return test.inputs[:100].numpy(), test.labels[:100].numpy()


def digits_eval_dict():
    x, y = digits_eval_tuple()
    return {"x": torch.from_numpy(x[:50]), "y": torch.from_numpy(y[:50])}


def digits_eval_data():
    from explorer.engine.model.data import EvalData

    x, y = digits_eval_tuple()
    return EvalData(torch.from_numpy(x[:20]), torch.from_numpy(y[:20]), "twenty digits")


def eval_inputs_only():
    return (torch.randn(7, 1, 8, 8),)


def eval_wrong_type():
    return "not data"


def eval_mismatched():
    return torch.randn(5, 1, 8, 8), torch.zeros(4, dtype=torch.int64)


def eval_float_labels():
    return torch.randn(5, 1, 8, 8), torch.zeros(5)


def eval_raises():
    raise RuntimeError("no data here")


def eval_no_inputs():
    return {"z": torch.zeros(3)}


def eval_not_arrays():
    return [[1.0, 2.0]], None


def eval_bfloat16():
    x, y = digits_eval_tuple()
    return torch.from_numpy(x[:10]).to(torch.bfloat16), torch.from_numpy(y[:10])
