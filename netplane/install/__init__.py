"""Node install: `netplane install` / `netplane uninstall` (also `python3 -m netplane.install`).

Standard library only, so a fresh Debian 12 machine can run it from a checkout with its
own python3 before netplane's virtualenv exists. See `plan` (what is installed, pure) and
`installer` (doing it, with a manifest for upgrade and uninstall).
"""
