"""matplotlib, imported when first needed, and the confusion matrix that results.png, a job's
TensorBoard figure and the cross-corpus figures draw alike."""
import numpy as np


def pyplot():
    """matplotlib.pyplot drawing to files (Agg), imported when first needed: it is slow to import."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw_confusion(ax, confusion, classes, title):
    """A confusion matrix (rows: true, columns: predicted), row-normalised, counts in the cells."""
    counts = np.array(confusion)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(counts)):
        for j in range(len(counts)):
            ax.text(j, i, f"{counts[i, j]}\n{100 * rates[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 4 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
