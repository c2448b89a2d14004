from qcourier.cli import qcourier

if __name__ == "__main__":
    qcourier()
