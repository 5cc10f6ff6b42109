"""Offline real data and small models for tests, tutorials and experiments."""

from .canvas import TwoDigitCanvas, make_two_digit_canvas
from .digits import DigitsData, load_digits_tensors
from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTData, load_fashion_mnist
from .models import DigitsCNN
from .text_models import TinyTextTransformer
from .training import TrainResult, accuracy, pretrained_digits_cnn, train_classifier, train_digits_cnn

__all__ = [
    "DigitsData",
    "load_digits_tensors",
    "FASHION_MNIST_CLASSES",
    "FashionMNISTData",
    "load_fashion_mnist",
    "DigitsCNN",
    "TinyTextTransformer",
    "TrainResult",
    "accuracy",
    "train_classifier",
    "train_digits_cnn",
    "pretrained_digits_cnn",
    "TwoDigitCanvas",
    "make_two_digit_canvas",
]
