"""The standard polyphonic-music likelihood benchmark of Boulanger-Lewandowski et al. 2012.

Piano-midi.de, Nottingham, MuseData and JSB Chorales as piano rolls: readers, exact frame
likelihood, training.
"""
