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


class LSTMClassifier(nn.Module):
    """Text classifier: Embedding, a one-layer LSTM, two Linear on the last hidden state."""

    def __init__(self, vocab=40, dim=12, hidden=16, classes=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 12)
        self.head = nn.Linear(12, classes)

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.emb(tokens))
        return self.head(torch.relu(self.fc(h[-1])))


class BiGRUTagger(nn.Module):
    """Embedding, a bidirectional two-layer GRU, a Linear per position (a tagger)."""

    def __init__(self, vocab=40, dim=10, hidden=8, tags=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        y, _ = self.gru(self.emb(tokens))
        return self.out(y)


class TinyUNet(nn.Module):
    """U-Net-like: two Conv2d downsamplings, ConvTranspose2d upsamplings, concatenation skips, 1x1 head."""

    def __init__(self, cin=1, base=4, classes=3):
        super().__init__()
        self.enc1 = nn.Conv2d(cin, base, 3, padding=1)
        self.enc2 = nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * base, 2 * base, 3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(2 * base, 2 * base, 2, stride=2)
        self.dec2 = nn.Conv2d(4 * base, 2 * base, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(2 * base, base, 2, stride=2, groups=2)
        self.dec1 = nn.Conv2d(2 * base, base, 3, padding=1)
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        e1 = torch.relu(self.enc1(x))
        e2 = torch.relu(self.enc2(e1))
        m = torch.relu(self.mid(e2))
        d2 = torch.relu(self.dec2(torch.cat([self.up2(m), e2], 1)))
        d1 = torch.relu(self.dec1(torch.cat([self.up1(d2), e1], 1)))
        return self.head(d1)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project (linear), a residual add when shapes match."""

    def __init__(self, cin, cout, stride=1, expand=3):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.project = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = torch.nn.functional.relu6(self.bn1(self.expand(x)))
        y = torch.nn.functional.relu6(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


class MobileNetV2ish(nn.Module):
    """A stem, three inverted-residual blocks (one with stride 2, one residual), global pool, Linear head."""

    def __init__(self, classes=6):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(InvertedResidual(8, 8), InvertedResidual(8, 12, stride=2),
                                    InvertedResidual(12, 12))
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = self.blocks(torch.nn.functional.relu6(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


class MixedSequenceNet(nn.Module):
    """Conv1d over embedded tokens, MultiheadAttention, an EmbeddingBag of the same tokens, a Linear head;
    also a PReLU and a LayerNorm (kept dense) and a free parameter of the model (a learned scale)."""

    def __init__(self, vocab=30, dim=8, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.act = nn.PReLU()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.scale = nn.Parameter(torch.ones(1))
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, tokens):
        x = self.act(self.conv(self.emb(tokens).transpose(1, 2))).transpose(1, 2)
        a, _ = self.attn(x, x, x, need_weights=False)
        pooled = self.norm(x + a).mean(1)
        return self.head(torch.cat([pooled, self.scale * self.bag(tokens)], 1))


def example_inputs():
    """(model, example input) pairs for every zoo model, seeded."""
    torch.manual_seed(0)
    return {
        "mlp": (MLP(), torch.randn(2, 64)),
        "cnn": (SmallCNN(), torch.randn(2, 1, 8, 8)),
        "resnet": (TinyResNet(), torch.randn(2, 3, 16, 16)),
        "depthwise": (DepthwiseNet(), torch.randn(2, 3, 4, 4)),
        "transformer": (TinyTransformer(), torch.randint(0, 50, (2, 12))),
        **layer_types_inputs(),
    }


def layer_types_inputs():
    """(model, example input) of the models that bring the other layer types (issue 16): LSTM, GRU,
    ConvTranspose2d, depthwise inverted residuals, Conv1d + MultiheadAttention + EmbeddingBag. Seeded."""
    torch.manual_seed(1)
    return {
        "lstm": (LSTMClassifier(), torch.randint(0, 40, (2, 7))),
        "bigru": (BiGRUTagger(), torch.randint(0, 40, (2, 6))),
        "unet": (TinyUNet(), torch.randn(2, 1, 8, 8)),
        "mobilenetv2": (MobileNetV2ish(), torch.randn(2, 3, 8, 8)),
        "mixed": (MixedSequenceNet(), torch.randint(0, 30, (2, 9))),
    }


def mixed_plan(info):
    """Element pruning and 4-bit k-means by default; filter pruning on the first layer that allows it;
    low-rank (half the parameters) on the first other layer that allows it and is worth factorising."""
    from explorer.engine.plan import Plan

    layers = {}
    structured = next((l for l in info.layers if l.filter_ok and not l.shared_with), None)
    if structured is not None:
        layers[structured.name] = {"prune": {"amount": 0.25, "granularity": "filter"}}
    for l in info.layers:
        if (l.lowrank_reason is None and l.name not in layers and not l.shared_with and l.type != "Embedding"
                and min(l.shape[:2]) >= 4):
            layers[l.name] = {"lowrank": {"rank": 0.5}}
            break
    return Plan.from_dict({"version": 1, "default": {"prune": {"amount": 0.5},
                                                      "quantize": {"bits": 4, "method": "kmeans"}},
                           "layers": layers})


def _factory(name):
    def make():
        pairs = example_inputs()
        model, x = pairs[name]
        return model.eval(), x
    make.__name__ = make.__qualname__ = f"{name}_model"
    make.__doc__ = f"A factory (model, example input) of the zoo's {name} model, for the CLI and the window."
    return make


# the zoo through the CLI and the window (tests/gui/test_zoo_matrix.py): zoo:<name>_model
mlp_model, cnn_model, resnet_model, depthwise_model, transformer_model = (
    _factory(n) for n in ("mlp", "cnn", "resnet", "depthwise", "transformer"))
unet_model, mobilenetv2_model = _factory("unet"), _factory("mobilenetv2")
lstm_model, mixed_model = _factory("lstm"), _factory("mixed")


def sparse_mlp_model():
    """A factory: 512 -> 256 -> 3 (the compressed runtime's tests prune and quantize the first layer)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 3)).eval(), torch.randn(1, 512)


def tiny_bert_folder(folder):
    """A Hugging Face folder (config.json + model.safetensors) of a tiny BERT classifier, random weights
    (seeded), written to ``folder``; needs transformers."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def mixed_example():
    """A factory (model, example input) for the CLI: the Conv1d + MultiheadAttention + EmbeddingBag model."""
    return layer_types_inputs()["mixed"]


def lstm_example():
    return layer_types_inputs()["lstm"]


def bigru_example():
    return layer_types_inputs()["bigru"]


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


def tokens_eval():
    """Eval data for the token models (vocabulary 30, 4 classes): 16 sequences of 7 tokens, seeded."""
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 30, (16, 7), generator=g), torch.randint(0, 3, (16,), generator=g)
