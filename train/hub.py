"""Push a training output folder (adapter, tokenizer, our card, plots, evaluation) to the Hub in one commit.

    python -m train.hub OUTPUT_DIR --repo-id NAME_OR_ID [--private]

The token is huggingface_hub's business: ``HF_TOKEN`` or the login stored by ``hf auth login`` (or the
``token`` argument). It is sent to the Hub and nowhere else: never printed, never written to a file.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from train.card import CardError, render_card, report_matches, write_card

# What a reader of the repo needs; trainer checkpoints, optimizer states and the pairs stay home.
ALLOW_PATTERNS = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "README.md",
    "recipe.yaml",
    "training_info.json",
    "metrics.jsonl",
    "data_stats.json",
    "plots/*.png",
    "eval/*",
    "sealed/*",
]
IGNORE_PATTERNS = ["checkpoint-*", "**/checkpoint-*", ".*", "**/.*"]


class HubPushError(RuntimeError):
    """The push cannot happen (one line: what is wrong, what to do)."""


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload the run in ``output_dir`` in one commit; return the repo URL.

    A bare repo name goes to the logged-in user's namespace. The card is re-rendered with the final
    repo id first, so its usage snippet names the repo it is read in. An existing repo is kept as it is,
    except that a private push into a public repo is refused.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    output_dir = Path(output_dir)
    if not (output_dir / "adapter_config.json").is_file():
        raise HubPushError(
            f"no adapter in {output_dir}: give the OUTPUT_DIR of a finished `python -m train` run"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubPushError(
            f"invalid repo id {repo_id!r}: use 'name' or 'namespace/name' (letters, digits, '-', '_', '.')"
        ) from None
    api = HfApi(token=token)
    with hub_errors(api, repo_id):
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        render_card(output_dir, repo_id=repo_id)  # a folder the card cannot be made from stops here
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        # create_repo leaves an existing repo as it is: never push a private run into a public repo.
        if private and not api.repo_info(repo_id).private:
            raise HubPushError(
                f"{repo_id} exists and is public, but a private push was asked: make it private on the Hub "
                "first, or push without --private"
            )
        write_card(output_dir, repo_id=repo_id)
        # a report of other weights (an old eval/ after re-training) is never published
        stale = [f"{folder}/*" for folder in ("eval", "sealed") if not report_matches(output_dir, folder)]
        api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS + stale,
            commit_message=commit_message or f"Upload {output_dir.name}: adapter, tokenizer, model card",
        )
    print(f"pushed {output_dir} to {url}")
    return url


@contextmanager
def hub_errors(api, repo_id: str):
    """The Hub's and the network's errors as one HubPushError line each: what is wrong, what to do."""
    import httpx2  # huggingface_hub's HTTP client: its connection errors are not OSErrors
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        yield
    except LocalTokenNotFoundError:
        raise HubPushError("not logged in to the Hub: run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubPushError(
                "the Hub refused the token (invalid or expired): run `hf auth login` again or set HF_TOKEN"
            ) from None
        if status == 403:
            raise HubPushError(
                f"no write access to {repo_id!r}: use your own namespace or a token with write permission"
            ) from None
        raise HubPushError(
            f"the Hub refused the push to {repo_id!r}: {str(error).strip().splitlines()[0]}"
        ) from None
    except CardError as error:
        raise HubPushError(str(error)) from None
    except (httpx2.TransportError, OSError) as error:  # refused, DNS, timeout; offline mode
        raise HubPushError(
            f"cannot reach the Hub at {api.endpoint}: {str(error).strip().splitlines()[0]}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.hub", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the folder `python -m train` wrote")
    parser.add_argument("--repo-id", required=True, help="'namespace/name', or 'name' for your own namespace")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args(argv)
    try:
        push_to_hub(args.output_dir, args.repo_id, private=args.private, commit_message=args.commit_message)
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
