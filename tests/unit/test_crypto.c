/*
 * test_crypto.c: unit tests of crypto.c against published test vectors
 * (FIPS 180-2 for SHA-256, RFC 4231 for HMAC-SHA256, RFC 4648 for base64),
 * through the C API and the devex.crypto Lua module.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>

#include "crypto.h"
#include "unit.h"

static void hex_of(const uint8_t *p, size_t n, char *out)
{
    devex_hex_encode(p, n, out);
}

static void test_sha256(void)
{
    uint8_t md[DEVEX_SHA256_LEN];
    char hex[2 * DEVEX_SHA256_LEN + 1];
    devex_sha256("", 0, md);
    hex_of(md, sizeof(md), hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    devex_sha256("abc", 3, md);
    hex_of(md, sizeof(md), hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    devex_sha256(two, strlen(two), md);
    hex_of(md, sizeof(md), hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_hmac(void)
{
    uint8_t mac[DEVEX_SHA256_LEN];
    char hex[2 * DEVEX_SHA256_LEN + 1];
    uint8_t key[131];

    /* RFC 4231 test case 1 */
    memset(key, 0x0b, 20);
    devex_hmac_sha256(key, 20, "Hi There", 8, mac);
    hex_of(mac, sizeof(mac), hex);
    CHECK_STR(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");

    /* test case 2: a key shorter than the block */
    const char *msg2 = "what do ya want for nothing?";
    devex_hmac_sha256("Jefe", 4, msg2, strlen(msg2), mac);
    hex_of(mac, sizeof(mac), hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    /* test case 6: a key longer than the block is hashed first */
    memset(key, 0xaa, sizeof(key));
    const char *msg6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    devex_hmac_sha256(key, sizeof(key), msg6, strlen(msg6), mac);
    hex_of(mac, sizeof(mac), hex);
    CHECK_STR(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");

    /* an empty key and message are valid (and easy to get wrong with NULL) */
    devex_hmac_sha256(NULL, 0, NULL, 0, mac);
    hex_of(mac, sizeof(mac), hex);
    CHECK_STR(hex, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

static void test_c_misc(void)
{
    char hex[9];
    const uint8_t bytes[] = {0x00, 0x7f, 0x80, 0xff};
    devex_hex_encode(bytes, sizeof(bytes), hex);
    CHECK_STR(hex, "007f80ff");
    devex_hex_encode(bytes, 0, hex);
    CHECK_STR(hex, "");

    CHECK(devex_ct_equal("abc", 3, "abc", 3));
    CHECK(!devex_ct_equal("abc", 3, "abd", 3));
    CHECK(!devex_ct_equal("abc", 3, "abcd", 4));
    CHECK(!devex_ct_equal("", 0, "a", 1));
    CHECK(devex_ct_equal("", 0, "", 0));
    CHECK(devex_ct_equal(NULL, 0, NULL, 0));

    uint8_t a[64], b[64], zero[64] = {0};
    CHECK(devex_random_bytes(a, sizeof(a)) == 0);
    CHECK(devex_random_bytes(b, sizeof(b)) == 0);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    CHECK(memcmp(a, zero, sizeof(a)) != 0);
    CHECK(devex_random_bytes(a, 0) == 0);

    char u1[37], u2[37];
    CHECK(devex_uuid4(u1) == 0);
    CHECK(devex_uuid4(u2) == 0);
    CHECK(strlen(u1) == 36);
    CHECK(strcmp(u1, u2) != 0);
    int ok = 1;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            ok &= u1[i] == '-';
        else
            ok &= (u1[i] >= '0' && u1[i] <= '9') || (u1[i] >= 'a' && u1[i] <= 'f');
    }
    CHECK(ok);
    CHECK(u1[14] == '4');
    CHECK(strchr("89ab", u1[19]) != NULL);
}

static const char *test_lua =
    "local c = require 'devex.crypto'\n"
    /* SHA-256 */
    "check(c.sha256_hex('') == 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'sha256 empty')\n"
    "check(c.sha256_hex('abc') == 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad', 'sha256 abc')\n"
    "check(#c.sha256('abc') == 32 and c.hex(c.sha256('abc')) == c.sha256_hex('abc'), 'raw sha256')\n"
    "check(c.sha256_hex(string.rep('a', 1000000)) ==\n"
    "      'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0', 'sha256 million a')\n"
    /* HMAC-SHA256, RFC 4231 cases 1, 2 and 6 */
    "check(c.hex(c.hmac_sha256(string.rep('\\x0b', 20), 'Hi There')) ==\n"
    "      'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7', 'hmac case 1')\n"
    "check(c.hex(c.hmac_sha256('Jefe', 'what do ya want for nothing?')) ==\n"
    "      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843', 'hmac case 2')\n"
    "check(c.hex(c.hmac_sha256(string.rep('\\xaa', 131), 'Test Using Larger Than Block-Size Key - Hash Key First')) ==\n"
    "      '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54', 'hmac case 6')\n"
    "check(c.hex(c.hmac_sha256('', '')) == 'b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad', 'hmac empty')\n"
    "check(not pcall(c.hmac_sha256, 'key'), 'hmac needs a message')\n"
    /* hex */
    "check(c.hex('') == '' and c.hex('\\0\\127\\128\\255') == '007f80ff', 'hex')\n"
    "check(c.unhex('007f80ff') == '\\0\\127\\128\\255', 'unhex')\n"
    "check(c.unhex('ABCDEF') == '\\xab\\xcd\\xef', 'unhex upper case')\n"
    "check(c.unhex('') == '', 'unhex empty')\n"
    "local all = {} for i = 0, 255 do all[#all + 1] = string.char(i) end all = table.concat(all)\n"
    "check(c.unhex(c.hex(all)) == all, 'hex round trip of every byte')\n"
    "local v, err = c.unhex('abc')\n"
    "check(v == nil and err:find('odd'), 'odd length rejected')\n"
    "local v, err = c.unhex('zz')\n"
    "check(v == nil and err:find('character'), 'bad digit rejected')\n"
    "check(c.unhex('0g') == nil and c.unhex(' 00') == nil and c.unhex('0x00') == nil, 'more bad hex')\n"
    /* base64url: RFC 4648 section 10, url alphabet, no padding */
    "local vectors = {[''] = '', f = 'Zg', fo = 'Zm8', foo = 'Zm9v', foob = 'Zm9vYg', fooba = 'Zm9vYmE', foobar = 'Zm9vYmFy'}\n"
    "for plain, enc in pairs(vectors) do\n"
    "  check(c.b64url(plain) == enc, 'b64url ' .. plain)\n"
    "  check(c.unb64url(enc) == plain, 'unb64url ' .. enc)\n"
    "end\n"
    "check(c.b64url('\\xfb\\xff') == '-_8', 'url alphabet: ' .. c.b64url('\\xfb\\xff'))\n"
    "check(c.b64url('\\xff\\xff\\xfe') == '___-', 'url alphabet 2')\n"
    "check(c.unb64url('-_8') == '\\xfb\\xff', 'url alphabet decodes')\n"
    "check(c.b64url('\\0\\0\\0') == 'AAAA' and c.unb64url('AAAA') == '\\0\\0\\0', 'zero bytes')\n"
    "check(c.unb64url(c.b64url(all)) == all, 'b64url round trip of every byte')\n"
    "for n = 0, 40 do\n"
    "  local s = c.random_bytes(n)\n"
    "  local e = c.b64url(s)\n"
    "  check(#e == (4 * n + 2) // 3 and not e:find('[=+/]'), 'b64url length ' .. n)\n"
    "  check(c.unb64url(e) == s, 'b64url round trip ' .. n)\n"
    "end\n"
    /* inputs long enough to cross the internal chunking */
    "for _, n in ipairs({3071, 3072, 3073, 10000, 65536}) do\n"
    "  local s = c.random_bytes(n)\n"
    "  local e = c.b64url(s)\n"
    "  check(#e == (4 * n + 2) // 3 and c.unb64url(e) == s, 'long b64url ' .. n)\n"
    "end\n"
    "for _, bad in ipairs({'Zm9v=', 'Zg==', 'Zm+v', 'Zm/v', 'Zm9 v', 'Z', 'Zm9vY', 'Zm9v\\n', '\\0', '*abc',\n"
    "                      'Zh', 'Zm9', 'Zm-'}) do\n"
    "  local v, err = c.unb64url(bad)\n"
    "  check(v == nil and type(err) == 'string', 'invalid base64url rejected: ' .. bad)\n"
    "end\n"
    /* constant-time comparison */
    "check(c.equal('secret', 'secret') == true, 'equal')\n"
    "check(c.equal('secret', 'secreT') == false, 'different')\n"
    "check(c.equal('secret', 'secret!') == false, 'different lengths')\n"
    "check(c.equal('', '') == true, 'empty strings')\n"
    "check(c.equal('a\\0b', 'a\\0c') == false, 'difference after a NUL')\n"
    "check(not pcall(c.equal, 'a'), 'equal needs two strings')\n"
    /* UUIDv4 */
    "local seen = {}\n"
    "for i = 1, 100 do\n"
    "  local u = c.uuid4()\n"
    "  check(#u == 36 and u:match('^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$')\n"
    "        and u == u:lower(), 'uuid4 format ' .. u)\n"
    "  check(not seen[u], 'uuid4 unique')\n"
    "  seen[u] = true\n"
    "end\n"
    /* random bytes */
    "check(#c.random_bytes(0) == 0 and #c.random_bytes(16) == 16 and #c.random_bytes(65536) == 65536, 'random lengths')\n"
    "check(c.random_bytes(32) ~= c.random_bytes(32), 'two random strings differ')\n"
    "check(not pcall(c.random_bytes, -1), 'negative length raises')\n"
    "check(not pcall(c.random_bytes, 65537), 'too long raises')\n"
    "check(not pcall(c.random_bytes, 1.5), 'non-integer raises')\n";

int main(void)
{
    test_sha256();
    test_hmac();
    test_c_misc();

    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "devex.crypto", luaopen_devex_crypto, 0);
    lua_pop(L, 1);
    lua_register(L, "check", unit_lua_check);
    unit_lua_run(L, "lua", test_lua);
    lua_close(L);
    return unit_done("test_crypto");
}
