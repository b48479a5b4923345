/* UTF-8 decoding and Python's idea of whitespace, for the code that
 * reproduces Python string operations (chat templates, their Jinja). */
#include "common/common.h"

uint32_t moe_utf8_next(const char *p, size_t n, size_t *len)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t k = u[0] < 0x80 ? 1 : u[0] >= 0xf8 ? 0 : u[0] >= 0xf0 ? 4 : u[0] >= 0xe0 ? 3
             : u[0] >= 0xc2 ? 2 : 0;
    if (k == 0 || k > n) {
        *len = 1;
        return 0xfffd;
    }
    uint32_t c = k == 1 ? u[0] : u[0] & (0x7f >> k);
    for (size_t i = 1; i < k; i++) {
        if ((u[i] & 0xc0) != 0x80) {
            *len = 1;
            return 0xfffd;
        }
        c = c << 6 | (u[i] & 0x3f);
    }
    *len = k;
    return c;
}

bool moe_py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}
