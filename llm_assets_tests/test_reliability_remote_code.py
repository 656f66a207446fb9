"""``model.trust_remote_code: true`` was accepted and silently ignored (issue 16, item 9): it is refused at recipe load
with one line naming the file and key, since no worker ever runs code shipped in a hub repo."""

import pytest

from llm_assets.recipes import RecipeError
from llm_assets_tests.helpers import HUB_REV, write_recipe


def test_trust_remote_code_is_refused_with_one_line(tmp_path):
    with pytest.raises(RecipeError) as e:
        write_recipe(tmp_path, model={"base": "acme/tiny-llama", "revision": HUB_REV, "trust_remote_code": True})
    [line] = str(e.value).splitlines()
    assert line.startswith(f"{tmp_path / 'tiny.yaml'}: key 'model.trust_remote_code'") and "never runs code from a hub repo" in line


def test_trust_remote_code_false_is_the_default_and_accepted(tmp_path):
    write_recipe(tmp_path, model={"trust_remote_code": False})
