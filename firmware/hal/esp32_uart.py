"""ESP32 meter link: machine.UART behind an RS-485 transceiver (MAX485 / SP3485 class).

Interface: firmware/hal/uart.py. The transceiver's DE and /RE pins are tied together to one
GPIO (`de_pin`): high = drive the bus, low = listen. Half duplex, so the direction must turn
round exactly: raise DE, write, wait until the last stop bit has left the shift register
(UART.flush(), MicroPython >= 1.20; txdone() polled as a fallback), drop DE. Dropping it
early truncates the CRC; dropping it late swallows the start of the meter's reply.

If /RE is wired to ground instead (receiver always on), every request comes back as a local
echo: pass echo=True and the echoed bytes are read back and discarded after each write.

`machine` and `select` are imported inside the constructor so the module also imports (and
compiles) on the unix port, where this class cannot run.
"""
from firmware.hal.uart import Uart

_EBADF = 9



class Esp32Uart(Uart):
    def __init__(self, uart_id=2, baudrate=9600, tx=17, rx=16, de_pin=4, parity=None,
                 stopbits=1, echo=False, rxbuf=512):
        import select

        import machine

        parity_arg = {None: None, "E": 0, "O": 1}[parity]
        self.baudrate = baudrate
        self._uart = machine.UART(uart_id, baudrate=baudrate, bits=8, parity=parity_arg,
                                  stop=stopbits, tx=tx, rx=rx, timeout=0, timeout_char=0,
                                  rxbuf=rxbuf)
        self._de = None
        if de_pin is not None:
            self._de = machine.Pin(de_pin, machine.Pin.OUT, value=0)
        self._echo = echo
        self._poll = select.poll()
        self._poll.register(self._uart, select.POLLIN)
        # One character of 11 bits, in microseconds (rounded up): the margin after txdone.
        self._char_us = (11000000 + baudrate - 1) // baudrate

    def _open_uart(self):
        """The UART; OSError once closed (the interface's "link gone", which the master
        counts as a link error)."""
        uart = self._uart
        if uart is None:
            raise OSError(_EBADF, "uart closed")
        return uart

    def _wait_tx_done(self, uart):
        import time

        if hasattr(uart, "flush"):
            uart.flush()
        if hasattr(uart, "txdone"):
            deadline = time.ticks_add(time.ticks_ms(), 1000)
            while not uart.txdone():
                if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                    break
        time.sleep_us(self._char_us)

    def write(self, data):
        de = self._de
        if de is not None:
            de.value(1)
        try:
            uart = self._open_uart()
            uart.write(data)
            self._wait_tx_done(uart)
        finally:
            if de is not None:
                de.value(0)
        if self._echo:
            self._discard_echo(len(data))

    def _discard_echo(self, n):
        import time

        uart = self._open_uart()
        deadline = time.ticks_add(time.ticks_ms(), 50 + n * self._char_us // 1000)
        while n > 0 and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            got = uart.read(n)
            if got:
                n -= len(got)

    def read(self, n):
        data = self._open_uart().read(n)
        return data or b""

    def wait_readable(self, timeout_ms):
        if self._open_uart().any():
            return True
        return bool(self._poll.poll(max(0, int(timeout_ms))))

    def close(self):
        uart = self._uart
        if uart is not None:
            self._poll.unregister(uart)
            uart.deinit()
            self._uart = None
