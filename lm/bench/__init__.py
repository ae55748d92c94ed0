"""`python -m lm.bench`: measuring tools. The train step's time, MFU and where it goes (step.py, profile.py),
decoding per weight format (decode.py) and the input pipeline (data.py); command.py prints them."""
