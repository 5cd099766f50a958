"""The byte pipe the Modbus master talks through: the one thing a meter link must offer.

Why a separate, tiny interface: the same master (firmware/modbus.py) runs over an ESP32
hardware UART with an RS-485 transceiver, over a tty on the unix port (a USB adapter or the
emulator's pseudo-terminal), and over a TCP socket carrying RTU frames unchanged ("RTU over
TCP"). Each of those lives in its own HAL module (firmware/hal/unix_uart.py: TtyUart,
TcpUart; firmware/hal/esp32_uart.py: Esp32Uart); the master sees only the members of Uart
below. Nothing else: no line discipline, no framing, no timeouts of its own.
"""


class Uart:
    """Base class documenting the interface; implementations override every method."""

    # Line speed in bit/s; the master derives the 3.5-character inter-frame silence from it.
    # Links without a line speed (TCP) report a nominal value.
    baudrate = 9600

    # Put one whole request on the line and return when it has left (RS-485: after the last
    # stop bit, so the direction pin can drop). OSError when the link is gone.
    def write(self, data):
        raise NotImplementedError

    # Non-blocking: up to n bytes already received, b'' when none. OSError when the link is
    # gone (e.g. the TCP peer closed).
    def read(self, n):
        raise NotImplementedError

    # Block until read() would return something (True), or timeout_ms elapsed (False);
    # timeout_ms == 0 polls.
    def wait_readable(self, timeout_ms):
        raise NotImplementedError

    # Release the port/socket. Idempotent.
    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
