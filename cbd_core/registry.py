"""Finding the attacks and defenses: every module of a package is imported and each class it defines
that subclasses the package's base class and has a `name` is registered, in the order of its
`menu_order` (then its name). Adding an attack or a defense is adding its module: no list to extend."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

T = TypeVar("T")


def discover(package: str, paths: list[str], base: type[T]) -> dict[str, T]:
    """{name: instance} of every concrete `base` subclass defined in a module of `package` (whose
    `__path__` is `paths`)."""
    found: list[T] = []
    for module_info in pkgutil.iter_modules(paths):
        module = importlib.import_module(f"{package}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, base) and value is not base \
                    and value.__module__ == module.__name__ and "name" in vars(value):
                found.append(value())
    found.sort(key=lambda item: (getattr(item, "menu_order", 100), item.name))
    return {item.name: item for item in found}
