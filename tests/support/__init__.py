"""Helpers the tests share (data, builders, small clients); no test lives here."""
