"""Ballast guest agent: reports a guest's memory state over xenstore and
carries out swap-shrink directives from the dom0 controller.

Depends on the standard library and pyxs only, so it stays light inside
guests.
"""
