"""Readers for real formats, built from small files the tests write, and their errors."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from fedloop import DataError, load_dataset
from fedloop.data.idx import read_idx
from fedloop.data.leaf import VOCAB_SIZE, encode_text


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


def mnist_dir(tmp_path, n_train=12, n_test=5, gz=True, prefix=""):
    g = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    files = {"train-images-idx3-ubyte": g.integers(0, 256, (n_train, 28, 28)),
             "train-labels-idx1-ubyte": g.integers(0, 10, n_train),
             "t10k-images-idx3-ubyte": g.integers(0, 256, (n_test, 28, 28)),
             "t10k-labels-idx1-ubyte": g.integers(0, 10, n_test)}
    for name, arr in files.items():
        write_idx(tmp_path / f"{prefix}{name}{suffix}", arr, gz)
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_reads_images_and_labels(tmp_path, gz):
    files = mnist_dir(tmp_path, gz=gz)
    d = load_dataset("mnist", tmp_path)
    assert d.x_train.shape == (12, 28, 28) and d.x_test.shape == (5, 28, 28)
    assert torch.allclose(d.x_train, torch.tensor(files["train-images-idx3-ubyte"] / 255.0, dtype=torch.float32))
    assert d.y_train.tolist() == files["train-labels-idx1-ubyte"].tolist()
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long


def test_emnist_files_are_found_by_split_and_transposed(tmp_path):
    g = np.random.default_rng(1)
    img = g.integers(0, 256, (3, 28, 28))
    for part, arr in (("train-images-idx3-ubyte", img), ("train-labels-idx1-ubyte", np.array([1, 2, 3])),
                      ("test-images-idx3-ubyte", img), ("test-labels-idx1-ubyte", np.array([4, 5, 6]))):
        write_idx(tmp_path / f"emnist-letters-{part}.gz", arr, gz=True)
    d = load_dataset("emnist", tmp_path, split="letters")
    assert torch.allclose(d.x_train[0], torch.tensor(img[0].T / 255.0, dtype=torch.float32))
    assert d.num_classes == 7


def test_idx_wrong_magic_number_names_the_file(tmp_path):
    mnist_dir(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x50\x4b\x03\x04" + bad.read_bytes()[4:])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong magic number 504b0304"):
        load_dataset("mnist", tmp_path)


def test_idx_truncated_file_is_reported(tmp_path):
    mnist_dir(tmp_path, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: truncated"):
        load_dataset("mnist", tmp_path)


def test_idx_label_count_must_match_image_count(tmp_path):
    mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11))
    with pytest.raises(DataError, match="11 labels for 12 images"):
        load_dataset("mnist", tmp_path)


def test_missing_files_and_directories_are_reported(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("kmnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("kmnist", tmp_path)
    with pytest.raises(DataError, match="data.path is required"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="cannot read IDX"):
        read_idx(tmp_path / "x.idx")


def test_unknown_dataset_name_lists_the_allowed_ones():
    with pytest.raises(DataError, match="'imagenet' is unknown; allowed: digits, mnist"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_a_built_in_dataset_given_a_file_says_it_reads_none(name, tmp_path):
    """A client's --data file must never be silently replaced by the embedded data."""
    with pytest.raises(DataError, match=rf"mine.npz: dataset '{name}' is built in and reads no file; set data.name "
                                        r"to the reader of this file \(mnist, .*npz, csv\)"):
        load_dataset(name, tmp_path / "mine.npz")


def test_bad_gzip_is_reported(tmp_path):
    mnist_dir(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a valid gzip"):
        load_dataset("mnist", tmp_path)


def cifar_dir(tmp_path, n=4):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    g = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (root / name).open("wb") as f:
            pickle.dump({b"data": g.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": list(g.integers(0, 10, n))}, f)
    return root


def test_cifar10_python_batches(tmp_path):
    cifar_dir(tmp_path)
    d = load_dataset("cifar10", tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32) and d.num_classes == 10
    assert float(d.x_train.max()) <= 1.0


def test_cifar_bad_batch_is_reported(tmp_path):
    root = cifar_dir(tmp_path)
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR"):
        load_dataset("cifar10", tmp_path)


def test_cifar100_labels_must_match(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name in ("train", "test"):
        with (root / name).open("wb") as f:
            pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [1, 2]}, f)
    with pytest.raises(DataError, match="2 labels for 3 images"):
        load_dataset("cifar100", root)


def leaf_dir(tmp_path, users: dict[str, tuple[list, list]], test_users: dict[str, tuple[list, list]]):
    for split, content in (("train", users), ("test", test_users)):
        (tmp_path / split).mkdir(parents=True)
        blob = {"users": list(content), "num_samples": [len(v[1]) for v in content.values()],
                "user_data": {u: {"x": x, "y": y} for u, (x, y) in content.items()}}
        (tmp_path / split / "all_data.json").write_text(json.dumps(blob))


def test_femnist_users_become_natural_clients(tmp_path):
    img = [0.5] * 784
    leaf_dir(tmp_path, {"w1": ([img, img], [3, 4]), "w2": ([img], [61])}, {"w1": ([img], [3]), "w2": ([img], [1])})
    d = load_dataset("femnist", tmp_path)
    assert d.x_train.shape == (3, 28, 28) and d.num_classes == 62
    assert d.train_users.tolist() == [0, 0, 1] and d.test_users.tolist() == [0, 1]


def test_shakespeare_encodes_characters(tmp_path):
    leaf_dir(tmp_path, {"HAMLET": (["to be or not to b"], ["e"])}, {"HAMLET": (["what light throug"], ["h"])})
    d = load_dataset("shakespeare", tmp_path)
    assert d.x_train.shape == (1, 80) and d.x_train.dtype == torch.long
    assert d.x_train[0].tolist() == encode_text("to be or not to b")
    assert d.num_classes == VOCAB_SIZE == d.vocab_size


def test_sent140_rows_take_the_text_field(tmp_path):
    row = ["1", "Mon Apr 06", "NO_QUERY", "user", "I love this", "x"]
    leaf_dir(tmp_path, {"u": ([row, row], [1, 0])}, {"u": ([row], [1])})
    d = load_dataset("sent140", tmp_path)
    assert d.x_train[0].tolist() == encode_text("I love this") and d.num_classes == 2


def test_leaf_mismatched_user_data_is_reported(tmp_path):
    leaf_dir(tmp_path, {"w1": ([[0.0] * 784], [1, 2])}, {"w1": ([[0.0] * 784], [1])})
    with pytest.raises(DataError, match="user 'w1' has 1 inputs but 2 labels"):
        load_dataset("femnist", tmp_path)


def test_leaf_needs_train_and_test_folders(tmp_path):
    with pytest.raises(DataError, match="test/ missing|train/ missing"):
        load_dataset("femnist", tmp_path)


def test_npz_with_and_without_a_test_split(tmp_path):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=g.normal(size=(10, 4)), y_train=np.arange(10) % 3,
             x_test=g.normal(size=(5, 4)), y_test=np.arange(5) % 3)
    d = load_dataset("npz", tmp_path / "a.npz")
    assert d.x_train.shape == (10, 4) and d.num_classes == 3
    np.savez(tmp_path / "b.npz", x=g.normal(size=(20, 4)), y=np.arange(20) % 2)
    d = load_dataset("npz", tmp_path / "b.npz", test_fraction=0.25)
    assert len(d.y_train) == 15 and len(d.y_test) == 5
    np.savez(tmp_path / "c.npz", features=np.zeros((2, 2)))
    with pytest.raises(DataError, match="c.npz: needs the arrays"):
        load_dataset("npz", tmp_path / "c.npz")
    with pytest.raises(DataError, match="missing.npz: does not exist"):
        load_dataset("npz", tmp_path / "missing.npz")


def test_csv_features_and_label_column(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("a,label,b\n" + "\n".join(f"{i},{i % 2},{i * 2}" for i in range(10)) + "\n")
    d = load_dataset("csv", f, test_fraction=0.2)
    assert d.x_train.shape == (8, 2) and d.num_classes == 2
    row = d.x_train[0].tolist()
    assert row[1] == 2 * row[0]
    with pytest.raises(DataError, match="label column 'y' not in header"):
        load_dataset("csv", f, label_column="y")
    f.write_text("a,label\n1,0\n2,zero\n")
    with pytest.raises(DataError, match=r"t.csv:3: every field must be a number"):
        load_dataset("csv", f)


def test_synthetic_is_seeded_and_has_natural_users():
    a = load_dataset("synthetic", alpha=1.0, beta=1.0, num_users=5, seed=3)
    b = load_dataset("synthetic", alpha=1.0, beta=1.0, num_users=5, seed=3)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape[1] == 60 and a.num_classes == 10
    assert set(a.train_users.tolist()) == set(range(5)) == set(a.test_users.tolist())
    assert len(a.y_train) >= 5 * 40  # at least 50 rows per device, 20% to test


def test_digits_is_embedded():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (8, 8) and len(d.y_train) + len(d.y_test) == 1797


def test_fashion_mnist_default_location_or_a_clear_error(tmp_path, monkeypatch):
    from fedloop.data import registry

    monkeypatch.setitem(registry.DEFAULT_PATHS, "fashion-mnist", tmp_path / "absent")
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    mnist_dir(tmp_path)
    monkeypatch.setitem(registry.DEFAULT_PATHS, "fashion-mnist", tmp_path)
    assert len(load_dataset("fashion-mnist").y_train) == 12
