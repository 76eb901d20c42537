"""Chat templates come from the model (a GGUF, then the artifact): real ones render as before, and a hostile
or broken one is refused quickly with an ArtifactError (exit 9), never a 20 GB string, a hang or a
traceback. The bombs run in a child process under a 2 GB address-space limit and a wall-clock timeout,
so a regression fails the test instead of eating the machine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from edgerun.core.errors import ArtifactError, ExitCode
from edgerun.export.llm.chat import render_chat

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
#: shaped as Llama 3's: bos_token, a loop with loop.first, |trim, a header per message
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
          "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
          "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
#: shaped as Gemma's: roles must alternate (raise_exception), 'assistant' is written 'model'
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
USER = [{"role": "user", "content": "  What is the capital of France?  "}]


def test_real_templates_still_render():
    assert render_chat(CHATML, USER) == "<|im_start|>user\n  What is the capital of France?  <|im_end|>\n" \
                                        "<|im_start|>assistant\n"
    assert render_chat(LLAMA3, USER, bos_token="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    two = USER + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
    assert render_chat(GEMMA, two, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis."
        "<end_of_turn>\n<start_of_turn>user\nAnd Spain?<end_of_turn>\n<start_of_turn>model\n")
    assert render_chat("{{ strftime_now('%Y') | length }}", USER) == "4"
    long = [{"role": "user", "content": "word " * 300_000}]        # 1.5 MB of message: the limit follows it
    assert len(render_chat(CHATML, long)) > 1_500_000


def test_a_template_that_raises_or_does_not_parse_is_an_artifact_error_naming_the_source():
    with pytest.raises(ArtifactError, match=r"the chat template of X cannot be rendered: TemplateError: Conversation "
                                            r"roles must alternate") as e:
        render_chat(GEMMA, USER * 2, source="the chat template of X")
    assert e.value.exit_code == ExitCode.PREFLIGHT and e.value.stage == "chat template"
    with pytest.raises(ArtifactError, match=r"TemplateSyntaxError"):
        render_chat("{% for %}", USER)
    with pytest.raises(ArtifactError, match=r"UndefinedError"):
        render_chat("{{ nothing.there }}", USER)


BOMBS = {
    # size: each would allocate gigabytes before printing a byte
    "multiply": "{{ 'x' * 20000000000 }}",
    "center": "{{ 'x' | center(20000000000) }}",
    "format width": "{{ '%20000000000s' % 'x' }}{{ '{:>{}}'.format('x', 20000000000) }}",
    "ljust": "{{ 'x'.ljust(20000000000) }}",
    "power": "{{ 10 ** 100000000 }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                "{{ ns.s | length }}",
    "repeated list": "{{ ([messages[0]['content'] * 100] * 100000) | tojson }}",
    "join": "{{ (['x' * 1000000] * 1000) | join }}",
    "replace": "{{ messages[0]['content'].replace('', 'y' * 100000) }}",
    "references": "{% set a = 'x' * 1000000 %}{% set b = [" + ", ".join(["a"] * 2000) + "] %}"
                  "{{ b ~ '' }}{{ '%s' % (b,) }}{{ b | string }}",
    "namespace": "{% set ns = namespace(a='x' * 1000000) %}{{ [ns] * 2000 }}{{ [ns.a] * 2000 }}",
    "flood": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    # time: each would run for hours
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested lists": "{% for x in [1] * 100000 %}{% for y in [1] * 100000 %}{% endfor %}{% endfor %}",
    "nested text": "{% for a in messages[0]['content'] %}{% for b in messages[0]['content'] %}"
                   "{% for c in messages[0]['content'] %}{% endfor %}{% endfor %}{% endfor %}",
}

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from edgerun.core.errors import ArtifactError
    from edgerun.export.llm.chat import render_chat
    results = {}
    for name, template in json.loads(sys.argv[1]).items():
        start = time.monotonic()
        try:
            out = render_chat(template, [{"role": "user", "content": "abc def " * 300}], seconds=float(sys.argv[2]))
            results[name] = ["rendered", len(out), time.monotonic() - start]
        except ArtifactError as exc:
            results[name] = [exc.message, exc.exit_code, time.monotonic() - start]
    print(json.dumps(results))
""")


def test_size_and_time_bombs_are_refused_quickly_under_a_2gb_limit():
    seconds = 0.5
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(BOMBS), str(seconds)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (message, code, took) in results.items():
        assert code == ExitCode.PREFLIGHT and "was refused" in message, (name, message)
        # size bombs are refused before building anything; time bombs at the deadline, plus one
        # watchdog period at most when no hook runs
        assert took < seconds + 1.5, (name, took)
    assert "ran for more than 0.5 s" in results["nested text"][0]
    assert "would make a value of" in results["multiply"][0]


def test_generate_chat_with_a_hostile_template_exits_9_before_touching_the_device(tiny_fp32, tmp_path, cli):
    """The template travels in the artifact's manifest; edited into a bomb, ``generate --chat`` refuses it
    with exit 9 and one JSON error naming the artifact (not exit 70, not a hang)."""
    import shutil

    for name, template in (("size", BOMBS["multiply"]), ("time", BOMBS["nested ranges"])):
        art = tmp_path / name
        shutil.copytree(tiny_fp32, art)
        manifest = json.loads((art / "manifest.json").read_text())
        manifest["llm"]["tokenizer"]["chat_template"] = template
        (art / "manifest.json").write_text(json.dumps(manifest))
        proc = cli("generate", str(art), "--device", "local://", "--prompt", "hi", "--chat", "-n", "2", "--json",
                   timeout=120)
        assert proc.returncode == ExitCode.PREFLIGHT, proc.stderr[-2000:]
        error = json.loads(proc.stdout)["error"]
        assert error["type"] == "ArtifactError" and error["stage"] == "chat template", error
        assert f"the chat template of artifact {art} was refused" in error["message"]


def test_every_template_llama_cpp_ships_renders_as_the_unbounded_sandbox_does(llamacpp):
    """llama.cpp's source carries real models' chat templates (models/templates/*.jinja: Llama 3.x, Qwen,
    Mistral, Gemma, Phi, DeepSeek, tool-use ones ...): each renders the same text under the bounds as in
    Jinja's plain sandbox, or fails the same way (a template that needs tools, or refuses a system turn)."""
    import time

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from edgerun.export.llm import chat as T

    folder = llamacpp.bindir.parents[1] / "src" / "models" / "templates"   # beside its build/bin
    templates = sorted(folder.glob("*.jinja"))
    if not templates:
        pytest.skip(f"no chat templates under {folder} (the llama.cpp source is not unpacked there)")
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"}]
    rendered = 0
    for path in templates:
        template = path.read_text(encoding="utf-8")
        plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=["jinja2.ext.loopcontrols", T._generation_extension()])

        def raise_exception(message):
            raise ValueError(message)

        plain.globals.update(raise_exception=raise_exception, strftime_now=time.strftime)
        try:
            want = plain.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                      bos_token="<s>", eos_token="</s>")
        except Exception:
            with pytest.raises(ArtifactError, match="cannot be rendered"):
                render_chat(template, messages, bos_token="<s>", eos_token="</s>")
            continue
        assert render_chat(template, messages, bos_token="<s>", eos_token="</s>") == want, path.name
        rendered += 1
    assert rendered >= len(templates) * 3 // 4, f"only {rendered} of {len(templates)} templates rendered"
