# Attack: flood the daemon — print without end, and return a result far larger than allowed —
# to exhaust its memory or the client's.
def output():
    line = "x" * 65535
    while True:
        print(line)


def result(size):
    return "y" * size
