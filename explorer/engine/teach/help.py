"""What each teaching view shows, why it matters, its formula (the README's Concepts) and its reference:
the "?" of every view in the window and a section of the handout (``compression-explorer report``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConceptHelp:
    key: str
    title: str
    shows: str
    why: str
    formula: str
    reference: str


HELP = {h.key: h for h in (
    ConceptHelp(
        "granularity", "Pruning granularity",
        "The layer's weight matrix (one row per output channel; a convolution's kernels laid out along the row), "
        "brightness |w|, with what pruning removes in orange: scattered weights (element), whole rows (filter) or "
        "whole column blocks (channel), or the rows merged into a twin (merge); beside it the next layer and the "
        "BatchNorm that lose their matching inputs.",
        "Element pruning keeps the shape, so it saves bytes only through sparse storage and saves time only on "
        "sparse kernels; filter and channel pruning make a smaller dense layer that runs faster anywhere, but take "
        "the coupled layers' weights with them.",
        "element: keep the ⌈(1 − s)·n⌉ largest |w|; filter: rank rows by L1 Σ|w| (or L2 √Σw²), remove the "
        "smallest; the consumer loses the matching input columns, a BatchNorm the matching scale and shift; merge: "
        "remove the neuron j of least s_j = ‖a_j‖²·min_i ‖W_i − W_j‖² (a_j its outgoing weights) and add a_j to its "
        "twin's a_i, no data needed.",
        "Han et al., Learning both Weights and Connections (NIPS 2015); Li et al., Pruning Filters for Efficient "
        "ConvNets (ICLR 2017), §3; Wen et al., Structured Sparsity Learning (NIPS 2016); Srinivas & Babu, "
        "Data-free Parameter Pruning for Deep Neural Networks (BMVC 2015), §3."),
    ConceptHelp(
        "storage", "Sparse storage",
        "The first entries of the layer's relative-index encoding: each survivor stored as (gap, value), gap the "
        "distance from the previous survivor; a gap wider than 2^b − 1 inserts a filler entry (value 0, marked). "
        "Below, bits per surviving weight for each gap width b = 3…8 against a bitmask and dense storage.",
        "Positions cost bits too: at high sparsity the index is most of the layer's size, and the best width "
        "depends on how far apart the survivors are. The file picks the cheapest for every layer.",
        "bits = entries × (b + value bits) + codebook, entries = survivors + fillers; bitmask = n + z·value bits; "
        "for random positions at density d, fillers per survivor ≈ q^M / (1 − q^M), q = 1 − d, M = 2^b − 1.",
        "Han, Mao & Dally, Deep Compression (ICLR 2016), §2 and Figure 2."),
    ConceptHelp(
        "quantization", "Quantization error against bits",
        "The relative error of the layer's surviving weights quantized at 1…8 bits by k-means with each "
        "initialisation (Forgy, density, linear, k-means++) and by uniform levels (symmetric, one scale per "
        "tensor); binary and ternary as marks. Right: the levels each method puts over the weights' histogram "
        "at the plan's bits.",
        "Fewer bits per weight shrink the file linearly; how fast the error grows as bits go down, and which "
        "levels keep the few large weights, decides how low a layer can go.",
        "relative error = ‖w − q(w)‖ / ‖w‖ over the survivors; k-means with k = 2^b shared values (2^b − 1 and 0 on "
        "a pruned layer); uniform symmetric: levels scale·{−Q…Q}, Q = 2^(b−1) − 1; binary {−α, α}, ternary {−α, 0, α}.",
        "Han, Mao & Dally, Deep Compression (ICLR 2016), §3 and Figure 8; Arthur & Vassilvitskii, k-means++ (2007); "
        "Li & Liu, Ternary Weight Networks (2016)."),
    ConceptHelp(
        "entropy", "Entropy coding",
        "How often each symbol of the layer's index stream (its weights' codes) and gap stream occurs, the length "
        "of its Huffman code, and the entropy line: the fewest bits per symbol any code can average.",
        "After pruning and quantization the streams are far from uniform: frequent symbols get short codes. "
        "Deep Compression saves 20–30% more this way; where one symbol has p > 0.5 a Huffman code wastes up to a "
        "bit per symbol and rANS gets close to the entropy.",
        "H = −Σ p_s log2 p_s bits per symbol; Huffman's mean length L satisfies H ≤ L < H + 1; a stream is stored "
        "raw, Huffman- or rANS-coded, whichever is smallest with its table.",
        "Han, Mao & Dally, Deep Compression (ICLR 2016), §4 and Figure 5; Huffman (1952); Duda, Asymmetric numeral "
        "systems (2013)."),
    ConceptHelp(
        "lowrank", "Low-rank spectrum",
        "The layer's singular values, largest first (a convolution: those of its output- and input-mode unfoldings, "
        "whose leading subspaces Tucker-2 keeps; a tensor train: those of each bond's unfolding, which TT-SVD cuts "
        "at its TT-rank), the share of the energy kept up to each rank, the plan's cut and the break-even ranks "
        "beyond which the factors are no smaller (weights) or no cheaper (MACs). A circulant layer has no cut: "
        "its numbers are said in words.",
        "A fast-falling spectrum means few ranks hold most of the layer: factorising it saves weights and MACs "
        "at little error. A flat one means the layer needs all its ranks.",
        "SVD W ≈ U_r Σ_r V_rᵀ: r(m + n) weights instead of mn, energy Σ_{i≤r} σ_i² / Σ σ_i², error √(1 − energy); "
        "Tucker-2 (R3, R4): S·R3 + D²·R3·R4 + T·R4 instead of D²·S·T; tensor train: Σ_k r_{k−1}·m_k·n_k·r_k "
        "weights; block-circulant (b × b blocks, each C_ij = c_{(i−j) mod b}): mn / b weights, run by FFT.",
        "Denton et al., Exploiting Linear Structure (NIPS 2014); Kim et al., Compression of Deep CNNs for Fast and "
        "Low Power Mobile Applications (ICLR 2016, Tucker-2); Lebedev et al. (ICLR 2015, CP); Novikov et al., "
        "Tensorizing Neural Networks (NeurIPS 2015, TT); Cheng et al., circulant projections (ICCV 2015)."),
    ConceptHelp(
        "pipeline", "The pipeline",
        "The model's bytes after each stage — dense float32, pruned (sparse storage), quantized, entropy-coded "
        "and the file as written — each bar stacked by layer, with the ratio to dense at each stage.",
        "Each stage multiplies the savings of the one before: this is where a model's bytes go, and which layer "
        "and which stage to work on next.",
        "ratio = dense bytes / stage bytes; dense = 32 bits a weight; biases and norms stay float32 throughout.",
        "Han, Mao & Dally, Deep Compression (ICLR 2016), Figure 1 and Tables 1–5."),
    ConceptHelp(
        "graph", "Model graph",
        "The model as a graph of its modules from its fx trace (residual adds and concatenations as merge "
        "nodes), each compressible layer coloured by the chosen measure; layers whose filters cannot be removed "
        "are outlined red. Click a layer to select it everywhere.",
        "Where the bytes and the sensitivity sit in the architecture decides a plan: the wide late layers hold "
        "the weights, the merges tie channels together.",
        "ratio = dense bits / coded bits; sparsity = pruned / weights; bits = coded bits / weights; share = the "
        "layer's coded bits / the model's.",
        "Reed et al., torch.fx (MLSys 2022); Google's Model Explorer and Netron draw such graphs without editing."),
    ConceptHelp(
        "outputs", "Teacher and student",
        "The original model (the teacher) and the compressed one (the student), before and after fine-tuning, "
        "on the same inputs: the top five classes with their probabilities, and how often the student's top "
        "class is the teacher's.",
        "Distillation trains the student to match the teacher's softened outputs, which carry more than the "
        "labels (which wrong classes are close); here you see how far compression moved them and how much "
        "fine-tuning brought back.",
        "p = softmax(z / T); distillation loss = (1 − α)·CE(y, p_s) + α·T²·KL(p_t ‖ p_s).",
        "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network (2015); Han et al. (2015), retraining."),
)}


def help_text(key: str) -> str:
    """The help of view ``key`` as plain paragraphs."""
    h = HELP[key]
    return (f"{h.title}\n\nWhat it shows: {h.shows}\n\nWhy it matters: {h.why}\n\nFormula: {h.formula}\n\n"
            f"Reference: {h.reference}")


__all__ = ["ConceptHelp", "HELP", "help_text"]
