"""``llmser push`` and ``llmser pull``: the Hub subcommands, registered by llmser/cli.py.

Examples::

    llmser push runs/system org/llmser-msp --private
    llmser push runs/system org/llmser-msp --card-report runs/system/test/report.json
    llmser pull org/llmser-msp --revision v1.0
    HF_HUB_OFFLINE=1 llmser pull org/llmser-msp        # checks the cached copy, no network

The token comes from ``HF_TOKEN`` or ``hf auth login``; there is deliberately no ``--token`` option,
so a token never lands in shell history or process listings, and llmser never prints it.
"""

from __future__ import annotations

import argparse


def add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a trained system folder to the Hugging Face Hub",
                       description="Upload a system folder (llmser.json, README.md, members) as a Hub model repo. "
                                   "Refuses pickle weights and local base-model paths before anything is sent. "
                                   "Token: HF_TOKEN or `hf auth login`.")
    p.add_argument("folder", metavar="DIR", help="system folder saved by llmser")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, org/name (created if it does not exist)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--message", default="Upload llmser system", help="commit message")
    p.add_argument("--card-report", default=None, metavar="REPORT_JSON",
                   help="(re)write README.md from llmser.json and this report.json before pushing")
    p.set_defaults(handler=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from llmser.hub.io import push

    if args.card_report:
        from llmser.hub.card import write_card

        print(f"model card: {write_card(args.folder, args.card_report, repo_id=args.repo_id)}")
    url = push(args.folder, args.repo_id, private=args.private, commit_message=args.message,
               revision=args.revision, create_pr=args.create_pr)
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0


def add_pull(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="download a shared system from the Hugging Face Hub (or check the cached copy)",
                       description="Download a system into the Hugging Face cache (or --local-dir), skipping pickle "
                                   "files, and validate its llmser.json. With HF_HUB_OFFLINE=1 it only checks the "
                                   "cache.")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, org/name")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--local-dir", default=None, help="download into this folder instead of the cache")
    p.set_defaults(handler=_run_pull)


def _run_pull(args: argparse.Namespace) -> int:
    from llmser.hub.io import pull

    folder = pull(args.repo_id, revision=args.revision, local_dir=args.local_dir)
    print(folder)
    return 0


__all__ = ["add_push", "add_pull"]
