"""Pipeline YAML: validation before any work, errors naming key, line and the nearest key."""

from __future__ import annotations

import pytest
import yaml

from mriflow.config import ConfigError, PipelineConfig, default_config, dump_defaults, load_config

OSIPY_STYLE = """\
modality: dce
data:
  format: auto
pipeline:
  model: extended_tofts
  aif_source: population
  population_aif: parker
acquisition:
  tr: 5.0
  flip_angles: [2, 5, 10, 15]
"""

DIFFUSION = """\
modality: dwi
fit: csd
tracking:
  method: probabilistic
  seeds: {mask: wm.nii.gz, density: 2}
  stopping: {map: gfa, threshold: 0.25}
  step_size: 0.5
cluster: {address: tcp://127.0.0.1:8786, n_workers: 2}
output: {chunks: [64, 64, 64], compressor: zstd}
"""


def write(tmp_path, text, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_osipy_style_and_diffusion_configs(tmp_path):
    dce = load_config(write(tmp_path, OSIPY_STYLE))
    assert dce.pipeline.model == "extended_tofts"
    assert dce.acquisition.flip_angles == [2, 5, 10, 15]
    dwi = load_config(write(tmp_path, DIFFUSION, "dwi.yaml"))
    assert dwi.tracking.seeds.density == 2
    assert dwi.cluster.n_workers == 2


@pytest.mark.parametrize("modality", ["dce", "dwi", "asl", "dsc", "ivim"])
def test_dumped_defaults_load_back(tmp_path, modality):
    text = dump_defaults(modality)
    assert load_config(write(tmp_path, text)) == default_config(modality)


def test_unknown_key_names_line_and_nearest_key(tmp_path):
    text = OSIPY_STYLE.replace("  population_aif: parker", "  populaton_aif: parker")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "line 7" in message
    assert "pipeline.populaton_aif" in message
    assert "did you mean 'population_aif'" in message


def test_wrong_type_and_value(tmp_path):
    text = DIFFUSION.replace("step_size: 0.5", "step_size: fast")
    with pytest.raises(ConfigError, match=r"line 7: tracking\.step_size.*'fast'"):
        load_config(write(tmp_path, text))
    text = OSIPY_STYLE.replace("model: extended_tofts", "model: two_compartment")
    with pytest.raises(
        ConfigError, match=r"pipeline\.model.*'tofts', 'extended_tofts' or 'patlak'"
    ):
        load_config(write(tmp_path, text))


def test_sections_must_fit_the_modality(tmp_path):
    with pytest.raises(ConfigError, match="does not apply to modality 'dwi'"):
        load_config(write(tmp_path, "modality: dwi\npipeline: {model: tofts}\n"))
    with pytest.raises(ConfigError, match="needs an ODF fit"):
        load_config(write(tmp_path, "modality: dwi\nfit: dti\ntracking: {}\n"))
    with pytest.raises(ConfigError, match="'modality' is required"):
        load_config(write(tmp_path, "fit: csd\n"))


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for previous, name in zip("abcdefghi", "bcdefghij", strict=True):
        bomb += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
    with pytest.raises(ConfigError, match="anchors and aliases are not allowed"):
        load_config(write(tmp_path, bomb))


def test_not_yaml_not_a_mapping_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "modality: [dce\n"))
    with pytest.raises(ConfigError, match="mapping of keys"):
        load_config(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    assert yaml.safe_load(dump_defaults("dce"))["modality"] == "dce"
    assert isinstance(default_config("dwi"), PipelineConfig)


def test_perfusion_sections_name_key_and_line(tmp_path):
    dsc = "modality: dsc\ncluster: {n_workers: 1}\ndsc:\n  baseline_frames: 4\n"
    with pytest.raises(ConfigError, match=r"line 3: 'dsc\.aif_mask' is required"):
        load_config(write(tmp_path, dsc))
    with pytest.raises(ConfigError, match="modality 'dsc' needs a 'dsc' section with aif_mask"):
        load_config(write(tmp_path, "modality: dsc\n"))
    ivim = "modality: ivim\nivim:\n  method: segmnted\n"
    with pytest.raises(ConfigError, match=r"line 3: ivim\.method: .*'segmented' or 'full'"):
        load_config(write(tmp_path, ivim))
    asl = "modality: asl\nasl:\n  t1_blood: 1.65\n  labelling_type: PCASL\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, asl))
    assert "line 4: unknown key 'asl.labelling_type'; did you mean 'labeling_type'?" in str(
        info.value
    )
    with pytest.raises(ConfigError, match=r"line 2: asl: give m0 \(an image\) or m0_value"):
        load_config(write(tmp_path, "modality: asl\nasl:\n  m0: m0.nii.gz\n  m0_value: 900\n"))
    with pytest.raises(ConfigError, match="'ivim' does not apply to modality 'asl'"):
        load_config(write(tmp_path, "modality: asl\nivim: {method: full}\n"))
    with pytest.raises(ConfigError, match=r"modality: Input should be 'dwi', 'dce', 'asl'"):
        load_config(write(tmp_path, "modality: bold\n"))
    config = load_config(write(tmp_path, "modality: asl\nasl: {post_labeling_delay: [1.5, 2]}\n"))
    assert config.asl.post_labeling_delay == [1.5, 2.0]
    assert load_config(write(tmp_path, "modality: ivim\n")).ivim is None  # defaults apply
