import torch

from captum_concepts.data import DigitsCNN, load_digits_tensors, make_two_digit_canvas


def test_digits_are_real_images_in_unit_range(digits):
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.min() >= 0 and digits.x_train.max() == 1.0
    assert set(digits.y_test.tolist()) == set(range(10))
    up = load_digits_tensors(upscale=2)
    assert up.x_train.shape == (1437, 1, 16, 16)
    # nearest upscaling copies each pixel into a 2x2 patch
    assert torch.equal(up.x_train[:, :, ::2, ::2], digits.x_train)


def test_trained_cnn_reaches_95_percent(trained_digits):
    assert trained_digits.test_accuracy >= 0.95, trained_digits.test_accuracy
    print(f"digits CNN: {trained_digits.test_accuracy:.3f} in {trained_digits.seconds:.1f} s")


def test_cnn_layer_shapes():
    model = DigitsCNN(image_size=(16, 24), embedding_dim=12)
    out = {}
    for name in ["block1.relu", "block2.pool", "block3.pool", "embedding_relu"]:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: out.__setitem__(n, o.shape))
    assert model(torch.rand(3, 1, 16, 24)).shape == (3, 10)
    assert out == {
        "block1.relu": (3, 16, 16, 24),
        "block2.pool": (3, 32, 8, 12),
        "block3.pool": (3, 64, 4, 6),
        "embedding_relu": (3, 12),
    }


def test_two_digit_canvas_labels_boxes_and_seed():
    c = make_two_digit_canvas(50, canvas_size=24, random_state=3)
    assert c.images.shape == (50, 1, 24, 24) and c.labels.shape == (50, 2) and c.boxes.shape == (50, 2, 4)
    assert (c.labels[:, 0] != c.labels[:, 1]).all()
    assert torch.equal(c.multi_hot.sum(1), torch.full((50,), 2.0))
    masks = c.box_masks()
    # every non-zero pixel is inside one of the two boxes, and the boxes do not overlap
    inside = masks.any(dim=1)
    assert (c.images[:, 0][~inside] == 0).all()
    assert not (masks[:, 0] & masks[:, 1]).any()
    # each box is tight: its border rows/columns contain ink
    for i in range(5):
        for k in range(2):
            x0, y0, x1, y1 = c.boxes[i, k].tolist()
            patch = c.images[i, 0, y0:y1, x0:x1]
            assert (
                patch[0].sum() > 0
                and patch[-1].sum() > 0
                and patch[:, 0].sum() > 0
                and patch[:, -1].sum() > 0
            )
    again = make_two_digit_canvas(50, canvas_size=24, random_state=3)
    assert torch.equal(again.images, c.images) and torch.equal(again.boxes, c.boxes)
    assert not torch.equal(make_two_digit_canvas(50, random_state=4).images, c.images)
