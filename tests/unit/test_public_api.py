"""The public surface: modelhost.__all__ and the error tree's codes and statuses."""

import importlib
import inspect

import pytest

import modelhost
from modelhost import errors

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ModelhostError) and cls.__module__ == errors.__name__
]
SUBCLASSES = [cls for cls in ERROR_CLASSES if cls is not errors.ModelhostError]


def test_all_is_sorted_and_unique():
    assert modelhost.__all__ == sorted(modelhost.__all__)
    assert len(set(modelhost.__all__)) == len(modelhost.__all__)


@pytest.mark.parametrize("name", modelhost.__all__)
def test_every_public_name_is_importable(name):
    module = importlib.import_module("modelhost")
    assert getattr(module, name) is not None


def test_version_is_the_package_version():
    from importlib.metadata import version

    assert modelhost.__version__ == version("modelhost")


def test_there_are_error_subclasses_to_check():
    assert len(SUBCLASSES) >= 11


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_error_class_for_code_round_trips(cls):
    assert errors.error_class_for_code(cls.code) is cls


@pytest.mark.parametrize("code", ["", "nope", "INVALID_INPUT", "not_found"])
def test_unknown_codes_map_to_the_root(code):
    assert errors.error_class_for_code(code) is errors.ModelhostError


def test_every_subclass_has_its_own_code():
    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(set(codes)) == len(codes), codes


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda cls: cls.__name__)
def test_every_subclass_has_a_4xx_or_5xx_status_and_a_snake_case_code(cls):
    assert 400 <= cls.status <= 599
    assert cls.code == cls.code.lower()
    assert cls.code.replace("_", "").isalpha()
    assert cls.__doc__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_errors_keep_their_message(cls):
    error = cls("something specific")
    assert isinstance(error, errors.ModelhostError)
    assert error.message == "something specific"
    assert str(error) == "something specific"


def test_overloaded_carries_retry_after():
    assert errors.Overloaded("full").retry_after_s == 1.0
    assert errors.Overloaded("full", retry_after_s=7).retry_after_s == 7


def test_public_errors_are_the_error_module_classes():
    for name in modelhost.__all__:
        obj = getattr(modelhost, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert getattr(errors, name) is obj


def test_public_types_are_the_types_module_classes():
    from modelhost import types

    for name in ["InferRequest", "InferResult", "ModelRef", "TensorSpec"]:
        assert getattr(modelhost, name) is getattr(types, name)


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="has no attribute 'InferReqest'"):
        _ = modelhost.InferReqest


def test_dir_lists_every_public_name():
    assert set(modelhost.__all__) <= set(dir(modelhost))
