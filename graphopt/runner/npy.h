// .npy and uncompressed .npz reading and writing for the graphopt runner (no dependencies).
//
// .npy: magic "\x93NUMPY", version, header length, a Python-dict header
// ({'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }), then the raw C-order data.
// .npz: a zip of .npy files. np.savez stores them uncompressed (and, since numpy 1.x, with
// zip64 extra fields in the local headers), so reading walks the central directory and
// skips each local header; compressed members (np.savez_compressed) are rejected.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::string name;    // npz member name without ".npy"
  std::string descr;   // numpy dtype string, e.g. "<f4", "|u1", "|b1"
  std::vector<int64_t> shape;
  std::vector<char> data;  // C order
};

inline std::runtime_error Error(const std::string& what) { return std::runtime_error(what); }

inline int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Bytes of one element of a numpy dtype string ("<f4" -> 4).
inline int ItemSize(const std::string& descr) {
  if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '|' && descr[0] != '=')) {
    throw Error("unsupported dtype '" + descr + "' (little-endian numeric types only)");
  }
  return std::stoi(descr.substr(2));
}

// Value of `key` in the header dict, as its raw text up to the next top-level ',' or '}'.
inline std::string HeaderField(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Error("npy header has no '" + key + "'");
  at = header.find(':', at) + 1;
  while (header[at] == ' ') ++at;
  int depth = 0;
  size_t end = at;
  for (; end < header.size(); ++end) {
    char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (depth < 0) break;
  }
  if (header[at] == '(') end = header.find(')', at) + 1;
  return header.substr(at, end - at);
}

inline Array ParseNpy(const char* p, size_t size, const std::string& name) {
  if (size < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) throw Error(name + ": not an .npy file");
  int major = static_cast<unsigned char>(p[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(p[8]) | (static_cast<unsigned char>(p[9]) << 8);
    offset = 10;
  } else {
    uint32_t n;
    std::memcpy(&n, p + 8, 4);
    header_len = n;
    offset = 12;
  }
  if (offset + header_len > size) throw Error(name + ": truncated .npy header");
  std::string header(p + offset, header_len);
  Array a;
  a.name = name;
  std::string descr = HeaderField(header, "descr");
  a.descr = descr.substr(1, descr.size() - 2);  // strip quotes
  if (HeaderField(header, "fortran_order").find("True") != std::string::npos) {
    throw Error(name + ": Fortran-order arrays are not supported (save a C-order copy)");
  }
  std::string shape = HeaderField(header, "shape");
  for (size_t i = 1; i < shape.size();) {
    while (i < shape.size() && (shape[i] < '0' || shape[i] > '9')) ++i;
    if (i >= shape.size()) break;
    size_t used;
    a.shape.push_back(std::stoll(shape.substr(i), &used));
    i += used;
  }
  size_t bytes = static_cast<size_t>(NumElements(a.shape)) * ItemSize(a.descr);
  size_t data_at = offset + header_len;
  if (data_at + bytes > size) throw Error(name + ": truncated .npy data");
  a.data.assign(p + data_at, p + data_at + bytes);
  return a;
}

inline std::vector<char> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open " + path);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

template <typename T>
T Get(const std::vector<char>& buf, size_t at) {
  if (at + sizeof(T) > buf.size()) throw Error("truncated zip file");
  T v;
  std::memcpy(&v, buf.data() + at, sizeof(T));
  return v;
}

// Members of an uncompressed .npz, in archive order.
inline std::vector<Array> ReadNpz(const std::string& path) {
  std::vector<char> buf = ReadFile(path);
  // End of central directory record: the last "PK\5\6" (a comment may follow it).
  if (buf.size() < 22) throw Error(path + ": not a zip/.npz file");
  size_t eocd = buf.size() - 22;
  while (Get<uint32_t>(buf, eocd) != 0x06054b50) {
    if (eocd == 0) throw Error(path + ": not a zip/.npz file");
    --eocd;
  }
  uint64_t count = Get<uint16_t>(buf, eocd + 10);
  uint64_t dir = Get<uint32_t>(buf, eocd + 16);
  if (count == 0xFFFF || dir == 0xFFFFFFFF) {  // zip64: locator just before the record
    uint64_t rec = Get<uint64_t>(buf, eocd - 20 + 8);
    count = Get<uint64_t>(buf, rec + 32);
    dir = Get<uint64_t>(buf, rec + 48);
  }
  std::vector<Array> out;
  size_t at = dir;
  for (uint64_t i = 0; i < count; ++i) {
    if (Get<uint32_t>(buf, at) != 0x02014b50) throw Error(path + ": bad zip central directory");
    uint16_t method = Get<uint16_t>(buf, at + 10);
    uint64_t csize = Get<uint32_t>(buf, at + 20);
    uint64_t usize = Get<uint32_t>(buf, at + 24);
    uint16_t name_len = Get<uint16_t>(buf, at + 28);
    uint16_t extra_len = Get<uint16_t>(buf, at + 30);
    uint16_t comment_len = Get<uint16_t>(buf, at + 32);
    uint64_t local = Get<uint32_t>(buf, at + 42);
    std::string name(buf.data() + at + 46, name_len);
    // zip64 extra field (id 1): the 0xFFFFFFFF fields, in the order usize, csize, offset.
    for (size_t e = at + 46 + name_len; e + 4 <= at + 46 + name_len + extra_len;) {
      uint16_t id = Get<uint16_t>(buf, e), len = Get<uint16_t>(buf, e + 2);
      size_t f = e + 4;
      if (id == 1) {
        if (usize == 0xFFFFFFFF) usize = Get<uint64_t>(buf, f), f += 8;
        if (csize == 0xFFFFFFFF) csize = Get<uint64_t>(buf, f), f += 8;
        if (local == 0xFFFFFFFF) local = Get<uint64_t>(buf, f), f += 8;
      }
      e += 4 + len;
    }
    if (method != 0 || csize != usize) {
      throw Error(path + ": member '" + name + "' is compressed; save inputs with np.savez, " +
                  "not np.savez_compressed");
    }
    if (Get<uint32_t>(buf, local) != 0x04034b50) throw Error(path + ": bad zip local header");
    size_t data = local + 30 + Get<uint16_t>(buf, local + 26) + Get<uint16_t>(buf, local + 28);
    if (data + usize > buf.size()) throw Error(path + ": truncated member '" + name + "'");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) {
      name.resize(name.size() - 4);
    }
    out.push_back(ParseNpy(buf.data() + data, usize, name));
    at += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

inline Array ReadNpy(const std::string& path, const std::string& name) {
  std::vector<char> buf = ReadFile(path);
  return ParseNpy(buf.data(), buf.size(), name);
}

inline std::string NpyBytes(const Array& a) {
  std::ostringstream shape;
  shape << "(";
  for (size_t i = 0; i < a.shape.size(); ++i) shape << (i ? ", " : "") << a.shape[i];
  shape << (a.shape.size() == 1 ? ",)" : ")");
  std::string header = "{'descr': '" + a.descr + "', 'fortran_order': False, 'shape': " +
                       shape.str() + ", }";
  // Pad with spaces so that magic + version + length + header + '\n' is a multiple of 64.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xFF));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(a.data.data(), a.data.size());
  return out;
}

inline uint32_t Crc32(const std::string& s) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) c = table[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw Error("cannot write " + path);
}

inline void WriteNpy(const std::string& path, const Array& a) { WriteFile(path, NpyBytes(a)); }

// An uncompressed zip of "<name>.npy" members, readable by np.load (members < 4 GiB).
inline void WriteNpz(const std::string& path, const std::vector<Array>& arrays) {
  std::string out, dir;
  for (const Array& a : arrays) {
    std::string name = a.name + ".npy", body = NpyBytes(a);
    if (body.size() >= 0xFFFFFFFFu) throw Error("output '" + a.name + "' is too large for .npz");
    uint32_t crc = Crc32(body), size = static_cast<uint32_t>(body.size());
    uint32_t offset = static_cast<uint32_t>(out.size());
    Put<uint32_t>(&out, 0x04034b50);
    Put<uint16_t>(&out, 20), Put<uint16_t>(&out, 0), Put<uint16_t>(&out, 0);  // version, flags, stored
    Put<uint16_t>(&out, 0), Put<uint16_t>(&out, 0x21);  // time, date (1980-01-01)
    Put<uint32_t>(&out, crc), Put<uint32_t>(&out, size), Put<uint32_t>(&out, size);
    Put<uint16_t>(&out, static_cast<uint16_t>(name.size())), Put<uint16_t>(&out, 0);
    out += name + body;
    Put<uint32_t>(&dir, 0x02014b50);
    Put<uint16_t>(&dir, 20), Put<uint16_t>(&dir, 20), Put<uint16_t>(&dir, 0), Put<uint16_t>(&dir, 0);
    Put<uint16_t>(&dir, 0), Put<uint16_t>(&dir, 0x21);
    Put<uint32_t>(&dir, crc), Put<uint32_t>(&dir, size), Put<uint32_t>(&dir, size);
    Put<uint16_t>(&dir, static_cast<uint16_t>(name.size()));
    Put<uint16_t>(&dir, 0), Put<uint16_t>(&dir, 0), Put<uint16_t>(&dir, 0), Put<uint16_t>(&dir, 0);
    Put<uint32_t>(&dir, 0), Put<uint32_t>(&dir, offset);
    dir += name;
  }
  uint32_t dir_at = static_cast<uint32_t>(out.size());
  out += dir;
  Put<uint32_t>(&out, 0x06054b50);
  Put<uint16_t>(&out, 0), Put<uint16_t>(&out, 0);
  Put<uint16_t>(&out, static_cast<uint16_t>(arrays.size()));
  Put<uint16_t>(&out, static_cast<uint16_t>(arrays.size()));
  Put<uint32_t>(&out, static_cast<uint32_t>(dir.size())), Put<uint32_t>(&out, dir_at);
  Put<uint16_t>(&out, 0);
  WriteFile(path, out);
}

}  // namespace npy
