"""vsmcp: the one import root of node/, mesh/, crdt/ and edge/.

Installed, setup.py maps the folders here (package-dir); in a checkout these are symlinks.
"""
