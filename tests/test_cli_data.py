"""`--data` beyond `.npz`: image directories in class folders and `module:function`."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import trained_mlp

from keras_condensa import cli
from keras_condensa.cli_data import load_data

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="reading images imports TensorFlow's tf.data; the TensorFlow leg covers it",
)

# A module the tests write: `(train, val)` as arrays, as batches, or something wrong.
_LOADERS = """
import numpy as np

data = np.load({npz!r})

def load():
    return (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"])

def batches():
    x, y = data["x_train"], data["y_train"]
    train = ((x[i : i + 100], y[i : i + 100]) for i in range(0, len(x), 100))
    return train, [(data["x_val"], data["y_val"])]

def number():
    return 5
"""


def _images(digits, per_class):
    """`{label: [8x8x1 uint8 images]}`: the first `per_class` digits of each class, 0-255."""
    x_train, y_train, _, _ = digits
    pixels = np.round(x_train.reshape(-1, 8, 8, 1) * 255).astype("uint8")
    return {label: pixels[y_train == label][:per_class] for label in range(10)}


def _write_images(folder, images):
    for label, arrays in images.items():
        os.makedirs(folder / str(label), exist_ok=True)
        for i, array in enumerate(arrays):
            keras.utils.save_img(str(folder / str(label) / f"{i}.png"), array, scale=False)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, digits):
    """Digits as PNG files in class folders, and an image model trained on them."""
    root = tmp_path_factory.mktemp("images")
    _write_images(root / "flat", _images(digits, 20))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train, y_train, _, _ = digits
    model.fit(x_train.reshape(-1, 8, 8, 1) * 255, y_train, epochs=3, verbose=0)
    path = str(root / "images.keras")
    model.save(path)
    return {"root": root, "model": path}


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory, digits):
    """The 64-32-10 digits model as .keras, its data as .npz, a module of loaders."""
    root = tmp_path_factory.mktemp("function")
    model_path = str(root / "mlp.keras")
    trained_mlp(digits, epochs=3).save(model_path)
    x_train, y_train, x_val, y_val = digits
    npz = str(root / "digits.npz")
    np.savez(npz, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    (root / "digit_loaders.py").write_text(_LOADERS.format(npz=npz))
    return {"root": root, "model": model_path, "loaders": str(root / "digit_loaders.py")}


@tensorflow_only
def test_compress_reads_a_directory_of_images_split_with_a_fixed_seed(
    image_files, tmp_path, capsys
):
    model = keras.saving.load_model(image_files["model"])
    data = load_data(str(image_files["root"] / "flat"), model)
    assert len(data["x_train"]) + len(data["x_val"]) == 200
    assert len(data["x_val"]) == 40  # cli_data.VALIDATION_SPLIT of the files
    assert data["x_train"].shape[1:] == (8, 8, 1) and data["x_train"].max() > 200
    assert sorted(np.unique(data["y_train"])) == list(range(10))
    again = load_data(str(image_files["root"] / "flat"), model)
    assert np.array_equal(again["y_val"], data["y_val"])  # the same split every time
    out = str(tmp_path / "small.keras")
    code = cli.main(
        ["compress", image_files["model"], "--data", str(image_files["root"] / "flat"),
         "--scheme", "prune:0.5", "--epochs", "1", "--out", out, "--json"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["density"] == pytest.approx(0.5, abs=0.05)
    assert result["dense_accuracy"] > 0.5  # the labels are the digits the folders name
    assert os.path.isfile(out)


@tensorflow_only
def test_train_and_validation_subfolders_are_the_splits(image_files, tmp_path, digits):
    images = _images(digits, 3)
    _write_images(tmp_path / "train", {k: v[:2] for k, v in images.items()})
    _write_images(tmp_path / "validation", {k: v[2:] for k, v in images.items()})
    model = keras.saving.load_model(image_files["model"])
    data = load_data(str(tmp_path), model)
    assert len(data["x_train"]) == 20 and "x_test" not in data
    assert list(data["y_val"]) == list(range(10))  # one image per class, in class order
    expected = np.stack([images[k][2] for k in range(10)]).astype("float32")
    assert np.array_equal(data["x_val"], expected)


def test_compress_reads_a_function_in_a_python_file(mlp_files, tmp_path, capsys, digits):
    out = str(tmp_path / "small.keras")
    code = cli.main(
        ["compress", mlp_files["model"], "--data", f"{mlp_files['loaders']}:load",
         "--scheme", "prune:0.3", "--epochs", "1", "--out", out, "--json"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["density"] == pytest.approx(0.3, abs=0.03)
    assert result["dense_accuracy"] > 0.8
    _, _, x_val, y_val = digits
    model = keras.saving.load_model(out)
    accuracy = np.mean(np.argmax(model.predict(x_val, verbose=0), -1) == y_val)
    assert accuracy == pytest.approx(result["accuracy"], abs=1e-6)


def test_a_module_function_may_return_batches(mlp_files, monkeypatch, digits):
    monkeypatch.chdir(mlp_files["root"])  # a module name is imported from the current folder
    model = keras.saving.load_model(mlp_files["model"])
    data = load_data("digit_loaders:batches", model)
    x_train, y_train, x_val, _ = digits
    assert np.array_equal(data["x_train"], x_train) and np.array_equal(data["y_train"], y_train)
    assert data["x_val"].shape == x_val.shape


@tensorflow_only
def test_a_module_function_may_return_tf_data_datasets(mlp_files, tmp_path, digits):
    x_train, y_train, x_val, y_val = digits
    path = tmp_path / "tf_loaders.py"
    path.write_text(
        "import numpy as np\nimport tensorflow as tf\n"
        f"data = np.load({str(tmp_path / 'd.npz')!r})\n"
        "def load():\n"
        "    train = tf.data.Dataset.from_tensor_slices((data['x'], data['y'])).batch(64)\n"
        "    val = tf.data.Dataset.from_tensor_slices((data['xv'], data['yv']))  # unbatched\n"
        "    return train, val\n"
    )
    np.savez(tmp_path / "d.npz", x=x_train, y=y_train, xv=x_val, yv=y_val)
    data = load_data(f"{path}:load", keras.saving.load_model(mlp_files["model"]))
    assert np.array_equal(data["x_train"], x_train)
    assert np.array_equal(data["x_val"], x_val) and np.array_equal(data["y_val"], y_val)


def _bad_source(case, image_files, mlp_files, tmp_path, digits):
    """`(model, --data, extra arguments)` of a bad-input case."""
    loaders = mlp_files["loaders"]
    if case == "no_module":
        return mlp_files["model"], "no_such_module_xyz:load", []
    if case == "no_function":
        return mlp_files["model"], f"{loaders}:lod", []
    if case == "wrong_return":
        return mlp_files["model"], f"{loaders}:number", []
    if case == "not_images_model":
        _write_images(tmp_path / "imgs", _images(digits, 2))
        return mlp_files["model"], str(tmp_path / "imgs"), []
    if case == "empty_directory":
        os.makedirs(tmp_path / "empty" / "a")
        os.makedirs(tmp_path / "empty" / "b")
        return image_files["model"], str(tmp_path / "empty"), []
    if case == "one_class":
        _write_images(tmp_path / "one", {7: _images(digits, 3)[7]})
        return image_files["model"], str(tmp_path / "one"), []
    assert case == "size_mismatch"
    return image_files["model"], str(image_files["root"] / "flat"), ["--image-size", "16,16"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_module", "no module no_such_module_xyz"),
        ("no_function", "has no lod; it defines"),
        ("wrong_return", "must return (train, val)"),
        ("not_images_model", "not images (height, width, channels)"),
        ("empty_directory", "images found in directory"),
        ("one_class", "found one class folder (7)"),
        ("size_mismatch", "give --image-size 8,8"),
    ],
)
def test_bad_data_exits_2_with_one_line_naming_the_fix(
    case, message, image_files, mlp_files, tmp_path, capsys, digits
):
    if keras.backend.backend() != "tensorflow" and case in ("empty_directory", "one_class"):
        pytest.skip("reading images imports TensorFlow's tf.data; the TensorFlow leg covers it")
    model, source, extra = _bad_source(case, image_files, mlp_files, tmp_path, digits)
    out = tmp_path / "small.keras"
    code = cli.main(
        ["compress", model, "--data", source, *extra, "--scheme", "prune:0.5", "--out", str(out)]
    )
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("keras")]
    assert len(lines) == 1 and lines[0].startswith("keras-condensa compress: error: ")
    assert message in lines[0]
    assert ("--image-size" if case == "size_mismatch" else f"--data {source}") in lines[0]
    assert not out.exists()
