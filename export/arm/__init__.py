"""Arm microcontrollers and NPUs: Ethos-U targets (TOSA + Vela) and Cortex-M targets.

The Arm backend runs in its own environment (:mod:`.toolchain`); :mod:`.targets` registers the targets,
backends, quantizers and the Vela estimator, :mod:`.vela` reads Vela's reports, :mod:`.worker` is the
export run inside the toolchain environment.
"""
