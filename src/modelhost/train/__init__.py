"""Training recipes that write packable model directories.

``digits-cnn`` (:func:`train_digits`) trains a small CNN on scikit-learn's digits.
"""

from modelhost.train.digits import TrainReport, train_digits

__all__ = ["TrainReport", "train_digits"]
