"""Build hook: configs/ (the single source of the recipes) goes into the wheel as bornagain_kd/_recipes/, where
`bornagain --config NAME` and `bornagain recipes` find it (src/bornagain_kd/recipes.py). Everything else is in
pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithRecipes(build_py):
    def run(self):
        super().run()
        source = Path(__file__).parent / "configs"
        target = Path(self.build_lib) / "bornagain_kd" / "_recipes"
        shutil.rmtree(target, ignore_errors=True)  # build/ is reused: a recipe deleted from configs/ must go too
        target.mkdir(parents=True)
        for recipe in sorted(source.glob("*.yaml")):
            shutil.copy2(recipe, target / recipe.name)


setup(cmdclass={"build_py": BuildWithRecipes})
